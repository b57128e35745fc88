"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): sites, concept stream, one-frame geometry.

Sites: every joint block's ``transformer_blocks.{i}.attn`` is ``blocks.{i}.attn`` and carries
the concept stream. Token order of a joint call: the ``h*w`` visual tokens first, then the ``T``
prompt tokens: the joint CLIP embedding (CLIP-L and CLIP-G penultimate hidden states side by
side, zero-padded to the T5 width; ``tokenizer_max_length`` rows, BOS first) followed by the T5
rows (``max_sequence_length``; zeros without T5). Every slot is attended; no rotary.
CFG runs in one batched call: rows ``[0, B/2)`` unconditional, ``[B/2, B)`` conditional (the
pipeline announces no branch, so the trace's guidance tells; :mod:`vidinterp.branches`).
Skip-layer guidance adds a conditional call with some blocks skipped: it is not analysed. The
stock processor calls SDPA itself, so the sites use a rewritten one.

The last block is ``context_pre_only``: its prompt stream ends after the attention (no
``to_add_out``, no prompt MLP), so the concepts attend there (their per-head outputs are
observed) and are not updated. SD3.5's dual attention (``attn2`` in the blocks listed by
``dual_attention_layers``) is a visual-only self-attention next to the joint one; it is not a
site (site names are one attention per block) and keeps its stock processor.

Concept stream (docs/methods.md): a concept is encoded alone exactly like a prompt through the joint
CLIP+T5 path, and its rows are the **CLIP rows** of its sub-tokens (positions ``1..k`` after
BOS, CLIP-L and CLIP-G features side by side), as in ConceptAttention's SD3 code; they exist
whether or not the pipeline has T5 (without T5 the T5 rows are zeros). The tokens are projected
by ``context_embedder`` and updated with the prompt stream's weights (``norm1_context``/
``norm2_context`` modulation and gates, ``add_{q,k,v}_proj``, ``norm_added_{q,k}``,
``to_add_out``, ``ff_context``).

Images are videos of one frame: ``num_frames`` must be 1. Renoising encodes with the VAE's shift
and scaling (``[1, C, h, w]`` latents, the transformer's input layout).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vidinterp.adapter import ConceptReduction, ConceptTokens, joint_site_specs, reduce_concept_rows, word_pieces
from vidinterp.layout import TokenLayout
from vidinterp.processors import SiteObserver, SiteProcessor, attention
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

from ._mmdit import ImageMMDiTAdapter

__all__ = ["SD3Adapter", "SD3SiteProcessor"]


class SD3SiteProcessor(SiteProcessor):
    """``JointAttnProcessor2_0`` of a joint block, operation for operation, with hook points (its
    tensors are already ``[batch, heads, tokens, head_dim]``)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        visual_tokens = hidden_states.shape[1]
        batch_size = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        encoder_query = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        encoder_key = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        encoder_value = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_added_q is not None:
            encoder_query = attn.norm_added_q(encoder_query)
        if attn.norm_added_k is not None:
            encoder_key = attn.norm_added_k(encoder_key)
        query = torch.cat([query, encoder_query], dim=2)
        key = torch.cat([key, encoder_key], dim=2)
        value = torch.cat([value, encoder_value], dim=2)
        output = self.attend(attn, query, key, value, lambda q, k, v: attention(self.original, q, k, v))

        hidden_states = output.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states, encoder_hidden_states = hidden_states[:, :visual_tokens], hidden_states[:, visual_tokens:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states, encoder_hidden_states


@register_adapter
class SD3Adapter(ImageMMDiTAdapter):
    family = "sd3"
    transformer_class_names = ("SD3Transformer2DModel",)
    token_order = "visual_first"

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(self.transformer, [("transformer_blocks", "attn", True)])

    def make_processor(self, spec: SiteSpec, original: object, observer: SiteObserver) -> SiteProcessor:
        """The stock processor calls SDPA itself, so it is rewritten; a processor of another type
        would silently lose its behaviour, so it is refused."""
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        if type(original) is not JointAttnProcessor2_0:
            raise NotImplementedError(
                f"{spec.module_path} uses {type(original).__name__}; vidinterp's SD3 sites rewrite "
                f"JointAttnProcessor2_0 (it calls SDPA directly), which would drop what another processor does: "
                f"call transformer.unfuse_qkv_projections() or unload IP-adapters first"
            )
        return SD3SiteProcessor(spec, original, observer)

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        batch, _, latent_height, latent_width = arguments["hidden_states"].shape
        return self.latent_layout(batch, 1, latent_height, latent_width, arguments["encoder_hidden_states"].shape[1],
                                  pixel_frames)

    def is_perturbed_call(self, arguments: dict[str, Any]) -> bool:
        """Skip-layer guidance's extra call (``skip_layers``) runs a perturbed branch."""
        return bool(arguments.get("skip_layers"))

    # ---------------------------------------------------------------- text
    @property
    def max_sequence_length(self) -> int:
        """T5 rows of a prompt: the pipeline's default, capped by the T5 tokenizer's limit."""
        default = self.call_default("max_sequence_length")
        tokenizer = self.pipe.tokenizer_3
        return int(default if tokenizer is None else min(default, tokenizer.model_max_length))

    @property
    def prompt_tokens(self) -> int:
        """CLIP rows then T5 rows."""
        return int(self.pipe.tokenizer_max_length) + self.max_sequence_length

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is CLIP-encoded alone as the pipeline encodes a prompt (both CLIPs'
        penultimate states side by side, zero-padded to the joint width); its rows are its
        sub-tokens after BOS, reduced over the sub-tokens."""
        pipe = self.pipe
        ids_and_pieces = [word_pieces(pipe.tokenizer, concept) for concept in concepts]
        for concept, (ids, _) in zip(concepts, ids_and_pieces):
            other, _ = word_pieces(pipe.tokenizer_2, concept)
            if len(other) != len(ids):
                raise ValueError(
                    f"concept {concept!r} splits into {len(ids)} tokens for tokenizer and {len(other)} for "
                    f"tokenizer_2; the two CLIP tokenizers must agree to align the rows"
                )
        with torch.no_grad():
            hidden = torch.cat([
                pipe._get_clip_prompt_embeds(prompt=list(concepts), device=self.device, clip_model_index=index)[0]
                for index in (0, 1)
            ], dim=-1)
        hidden = F.pad(hidden, (0, self.transformer.config.joint_attention_dim - hidden.shape[-1]))
        length = int(pipe.tokenizer_max_length)
        positions = [list(range(1, 1 + min(len(ids), length - 2))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        embeddings = reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction)
        return ConceptTokens(list(concepts), embeddings, pieces, reduction)

    # ---------------------------------------------------------------- geometry
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    def max_token_grid(self) -> int | None:
        """The positional embedding's ``pos_embed_max_size``."""
        size = self.transformer.config.pos_embed_max_size
        return None if size is None else int(size)

    # ---------------------------------------------------------------- running
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"height": height, "width": width, "max_sequence_length": self.max_sequence_length}

    def _schedule_kwargs(self, num_inference_steps: int, visual_tokens: int) -> dict[str, Any]:
        """As ``StableDiffusion3Pipeline``: the scheduler's own sigmas; ``mu`` from the token
        count only when the scheduler uses dynamic shifting."""
        if self.pipe.scheduler.config.get("use_dynamic_shifting", None):
            return {"sigmas": None, "mu": self._shift(visual_tokens)}
        return {"sigmas": None}

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``latents``: ``[1, C, h, w]``; CFG batched ``[unconditional, conditional]`` when
        ``guidance_scale > 1``, combined as the pipeline does."""
        pipe, transformer = self.pipe, self.transformer
        cfg = self.cfg_batched(guidance_scale)
        prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt, max_sequence_length=self.max_sequence_length,
        )
        if cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([current] * 2) if cfg else current
            output = transformer(  # SD3's transformer has no cache_context: the trace's guidance tells
                hidden_states=model_input,
                timestep=timestep.expand(model_input.shape[0]),
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
            if cfg:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            return output

        return call
