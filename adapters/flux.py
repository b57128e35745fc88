"""Flux (FLUX.1 dev / schnell, ``FluxPipeline``): sites, concept stream, one-frame geometry.

Sites, in execution order: the ``N`` dual-stream blocks' ``transformer_blocks.{i}.attn`` are
``blocks.{i}.attn`` and carry the concept stream; the single-stream blocks'
``single_transformer_blocks.{j}.attn`` are ``blocks.{N + j}.attn`` without one (ConceptAttention
stops the concepts at the dual-stream blocks). Every site is joint: the sequence is the ``T``
prompt tokens (T5, padding included: Flux attends to every slot) then the ``h*w`` visual tokens
(latents packed into 2x2 patches). Rotary embeddings apply to the whole sequence; prompt tokens
have position ids 0 (identity rotation), and so do the concepts, which therefore skip rotary.

CFG: Flux is guidance-distilled; ``guidance_scale`` is an embedded scalar, so there is no
batched CFG (``cfg_batched`` is False). With true CFG (``true_cfg_scale > 1`` and a negative
prompt) the pipeline calls the transformer twice per step, conditional first: the second call of a
step is not analysed.

Concept stream (docs/methods.md): concepts are T5-encoded like the prompt (each alone, padded to the
prompt's ``max_sequence_length``), projected by ``context_embedder`` and updated in the dual-stream
blocks with the prompt stream's weights (``norm1_context``/``norm2_context`` modulation and
gates, ``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``ff_context``).

Images are videos of one frame: ``num_frames`` must be 1. Renoising encodes with the VAE's shift
and scaling; latents stay unpacked ``[1, C, h, w]`` between steps (the pipeline's noise layout)
and are packed with the pipeline's own helpers for each transformer call.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vidinterp.adapter import ConceptReduction, ConceptTokens, call_argument, joint_site_specs, reduce_concept_rows, word_pieces
from vidinterp.layout import TokenLayout
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteProcessor, SiteSpec

from ._mmdit import (
    ImageMMDiTAdapter,
    concept_attention,
)

__all__ = ["FluxAdapter", "FluxSiteProcessor"]


class FluxSiteProcessor(SiteProcessor):
    """``FluxAttnProcessor`` with hook points; on dual-stream sites also the concept stream.

    The stock processor works in ``[batch, tokens, heads, head_dim]``; the hook points see the
    same tensors transposed to ``[batch, heads, tokens, head_dim]`` (views, no copies), and
    what a hook returns is transposed back, so the attention call is the stock one.
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # [B, S, H, d] -> hook points in [B, H, S, d] -> back.
        query = self.hook_q(query.transpose(1, 2))
        key = self.hook_k(key.transpose(1, 2))
        value = self.hook_v(value.transpose(1, 2))
        output = dispatch_attention_fn(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=attention_mask,
            backend=getattr(self.original, "_attention_backend", None),
            parallel_config=getattr(self.original, "_parallel_config", None),
        )
        output = self.hook_z(output.transpose(1, 2))

        if encoder_hidden_states is not None:
            text_length = encoder_hidden_states.shape[1]
        else:  # single-stream block: the prompt tokens lead the joint sequence it receives
            text_length = self.runtime.layout.prompt_tokens
        concept_tensors = {}
        if self.spec.concept_stream and self.runtime.concepts_active:
            rows = self.runtime.layout.analysed_rows
            concept_tensors = concept_attention(self, attn, key[rows, :, text_length:], value[rows, :, text_length:])
        parts = {"prompt": slice(0, text_length), "visual": slice(text_length, query.shape[2])}
        self.report(
            {"q": query, "k": key, "v": value, "z": output},
            {name: parts for name in ("q", "k", "v", "z")},
            concept_tensors,
        )

        hidden_states = output.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [text_length, hidden_states.shape[1] - text_length], dim=1
        )
        hidden_states = attn.to_out[0](hidden_states.contiguous())
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states


@register_adapter
class FluxAdapter(ImageMMDiTAdapter):
    family = "flux"
    transformer_class_names = ("FluxTransformer2DModel",)
    default_renoise_guidance = None  # embedded guidance: keep the pipeline default
    prompt_first = True

    # ---------------------------------------------------------------- sites
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(
            self.transformer, [("transformer_blocks", "attn", True), ("single_transformer_blocks", "attn", False)]
        )

    def make_processor(self, spec: SiteSpec, original: object, runtime: Runtime) -> SiteProcessor:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        if type(original) is not FluxAttnProcessor:
            raise NotImplementedError(
                f"{spec.module_path} uses {type(original).__name__}; vidinterp reproduces only "
                f"FluxAttnProcessor (unload IP-adapters and custom processors first)"
            )
        return FluxSiteProcessor(spec, original, runtime)

    def _call_layout(self, module: nn.Module, args: tuple, kwargs: dict,
                     runtime: Runtime) -> tuple[TokenLayout, bool, torch.Tensor]:
        latents = call_argument(module, args, kwargs, "hidden_states")
        prompt = call_argument(module, args, kwargs, "encoder_hidden_states")
        image_ids = call_argument(module, args, kwargs, "img_ids")
        image_ids = image_ids[0] if image_ids.ndim == 3 else image_ids
        rows, columns = (int(image_ids[:, axis].max()) + 1 for axis in (1, 2))
        if rows * columns != latents.shape[1]:
            raise ValueError(
                f"img_ids span a {rows}x{columns} grid but the call has {latents.shape[1]} visual "
                f"tokens; vidinterp supports plain FluxPipeline calls (no extra conditioning tokens)"
            )
        layout = self._layout(latents.shape[0], rows, columns, prompt.shape[1], cfg_batched=False)
        return layout, self._is_conditional_call(runtime), prompt

    def _is_conditional_call(self, runtime: Runtime) -> bool:
        """True CFG runs the conditional call first and the negative one second within a step,
        which the pipeline marks with the same ``_current_timestep`` object. Outside the
        pipeline (renoising) ``_current_timestep`` does not change, but the step does."""
        key = (runtime.step, getattr(self.pipe, "_current_timestep", None))
        previous, self._last_call = self._last_call, key
        return previous is None or key[1] is None or previous[0] != key[0] or previous[1] is not key[1]

    def register_hooks(self, runtime: Runtime) -> list[RemovableHandle]:
        self._last_call: tuple[int, object] | None = None
        return super().register_hooks(runtime)

    # ---------------------------------------------------------------- text
    @property
    def max_sequence_length(self) -> int:
        """T5 length of prompts: the pipeline's default, capped by the tokenizer's limit."""
        default = inspect.signature(type(self.pipe).__call__).parameters["max_sequence_length"].default
        return int(min(default, self.pipe.tokenizer_2.model_max_length))

    @property
    def prompt_tokens(self) -> int:
        return self.max_sequence_length

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is T5-encoded alone exactly as the pipeline encodes a prompt (padded to
        :attr:`max_sequence_length`), then reduced over its sub-tokens (no BOS in T5)."""
        length = self.max_sequence_length
        ids_and_pieces = [word_pieces(self.pipe.tokenizer_2, concept) for concept in concepts]
        with torch.no_grad():
            hidden = self.pipe._get_t5_prompt_embeds(prompt=list(concepts), max_sequence_length=length,
                                                     device=self.device)
        positions = [list(range(min(len(ids), length - 1))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        embeddings = reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction)
        return ConceptTokens(list(concepts), embeddings, pieces, reduction)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt (``tokenizer_2``): Flux's prompt sequence."""
        return locate_prompt_words(self.pipe.tokenizer_2, prompt, concepts, reduction,
                                   max_length=self.max_sequence_length, model="Flux")

    # ---------------------------------------------------------------- geometry
    @property
    def token_cell(self) -> int:
        """VAE compression times the 2x2 latent packing (times the transformer's patch size)."""
        return int(self.pipe.vae_scale_factor) * 2 * int(self.transformer.config.patch_size)

    # ---------------------------------------------------------------- running
    def cfg_batched(self, guidance_scale: float) -> bool:
        return False

    def unconditional_branch(self, scale: float) -> dict[str, Any]:
        """True CFG (``true_cfg_scale``, with a negative prompt): ``guidance_scale`` is embedded."""
        return {"true_cfg_scale": scale}

    def latents_from_pipeline(self, latents: torch.Tensor, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The pipeline's packed ``[B, h*w/4, 4C]`` latents unpacked to ``[B, C, h, w]``."""
        _, height, width = geometry
        return self.pipe._unpack_latents(latents, height, width, int(self.pipe.vae_scale_factor))

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"height": height, "width": width, "max_sequence_length": self.max_sequence_length}

    def _schedule_kwargs(self, num_inference_steps: int, visual_tokens: int) -> dict[str, Any]:
        """As ``FluxPipeline``: ``sigmas = linspace(1, 1/n, n)`` (none with flow sigmas) and
        ``mu`` from the packed sequence length (ignored without dynamic shifting)."""
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        return {"sigmas": sigmas, "mu": self._shift(visual_tokens)}

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``latents``: unpacked ``[1, C, h, w]``. ``guidance_scale`` is Flux's embedded guidance
        (used when the transformer has guidance embeddings, as the pipeline does); there is no
        true CFG here, so ``negative_prompt`` is ignored with a warning."""
        pipe, transformer = self.pipe, self.transformer
        if negative_prompt:
            warnings.warn("Flux is guidance-distilled: negative_prompt is ignored when renoising", stacklevel=2)
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        batch, channels, height, width = latents.shape
        image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, prompt_embeds.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=self.device, dtype=torch.float32).expand(batch)
        scale = int(pipe.vae_scale_factor)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            packed = pipe._pack_latents(current, batch, channels, height, width)
            output = transformer(
                hidden_states=packed,
                timestep=timestep.expand(batch).to(packed.dtype) / 1000,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
            return pipe._unpack_latents(output, height * scale, width * scale, scale)

        return call
