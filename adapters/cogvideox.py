"""CogVideoX (2B, 5B, 1.5, image-to-video): sites, concept stream, geometry, pipelines.

Token order of a joint-attention call: prompt tokens first (``T`` = the transformer's
``max_text_seq_length``, padded slots included: CogVideoX attends to every slot), then the
``F*h*w`` visual tokens, frame-major. Rotary (5B, 1.5) applies to visual q/k only. The pipeline
stacks the CFG branches in one call (``cache_context("cond_uncond")``).

The stock processor calls ``F.scaled_dot_product_attention`` itself, so the sites use a rewritten
processor (same operations, hook points, the user's attention backend when one is set).

Concept stream (docs/methods.md, "Concept stream"): concept embeddings enter through
``patch_embed.text_proj`` and every block updates them with the prompt stream's weights: the text
half of ``norm1``/``norm2`` modulation (shift, scale, gate), the shared q/k/v/out projections and
q/k norms, and the shared feed-forward.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from vidinterp.adapter import Adapter, ConceptReduction, ConceptTokens, joint_site_specs, reduce_concept_rows, word_pieces
from vidinterp.concept_stream import ConceptProjections, ConceptStreamSpec, StreamModulation
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout
from vidinterp.processors import SiteObserver, SiteProcessor, attention
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

__all__ = ["CogVideoXAdapter", "CogVideoXSiteProcessor", "CogVideoXModulation"]


def _heads(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """``[batch, tokens, heads*head_dim]`` -> ``[batch, heads, tokens, head_dim]``."""
    return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


class CogVideoXModulation(StreamModulation):
    """The text half of a CogVideoX block's ``norm1``/``norm2`` (``CogVideoXLayerNormZero``:
    the last three of its six chunks are the text shift, scale and gate) and its shared
    feed-forward."""

    @staticmethod
    def _text(norm: nn.Module, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, _, shift, scale, gate = norm.linear(norm.silu(temb)).chunk(6, dim=1)
        return shift[:, None], scale[:, None], gate[:, None]

    def before(self, block, hidden, temb):
        shift, scale, gate = self._text(block.norm1, temb)
        return block.norm1.norm(hidden) * (1 + scale) + shift, (gate, temb)

    def after(self, block, hidden, attention_output, state):
        gate, temb = state
        hidden = hidden + gate * attention_output
        shift, scale, gate = self._text(block.norm2, temb)
        return hidden + gate * block.ff(block.norm2.norm(hidden) * (1 + scale) + shift)


class CogVideoXSiteProcessor(SiteProcessor):
    """``CogVideoXAttnProcessor2_0``, operation for operation, with hook points."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = _heads(attn.to_q(hidden_states), batch_size, attn.heads)
        key = _heads(attn.to_k(hidden_states), batch_size, attn.heads)
        value = _heads(attn.to_v(hidden_states), batch_size, attn.heads)
        head_dim = query.shape[-1]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        output = self.attend(attn, query, key, value,
                             lambda q, k, v: attention(self.original, q, k, v, attention_mask))

        hidden_states = output.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


@register_adapter
class CogVideoXAdapter(Adapter):
    family = "cogvideox"
    transformer_class_names = ("CogVideoXTransformer3DModel",)
    token_order = "prompt_first"
    default_renoise_fraction = 0.6  # reference: step 30 of 50

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(self.transformer, [("transformer_blocks", "attn1", True)])

    def make_processor(self, spec: SiteSpec, original: object, observer: SiteObserver) -> SiteProcessor:
        return CogVideoXSiteProcessor(spec, original, observer)

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        batch, latent_frames, _, latent_height, latent_width = arguments["hidden_states"].shape  # frames first
        return self.latent_layout(batch, latent_frames, latent_height, latent_width,
                                  arguments["encoder_hidden_states"].shape[1], pixel_frames)

    # ---------------------------------------------------------------- text
    @property
    def prompt_tokens(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is encoded alone, exactly as the pipeline encodes a prompt (T5, padded
        to ``max_text_seq_length``), then reduced over its sub-tokens."""
        tokenizer = self.pipe.tokenizer
        ids_and_pieces = [word_pieces(tokenizer, concept) for concept in concepts]
        with torch.no_grad():
            hidden = self.pipe._get_t5_prompt_embeds(
                prompt=list(concepts), max_sequence_length=self.prompt_tokens, device=self.device
            )
        positions = [list(range(min(len(ids), self.prompt_tokens - 1))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        embeddings = reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction)
        return ConceptTokens(list(concepts), embeddings, pieces, reduction)

    def concept_stream(self, concepts: ConceptTokens) -> ConceptStreamSpec:
        project = self.transformer.patch_embed.text_proj

        def enter(arguments: dict[str, Any], rows: slice, like: torch.Tensor) -> torch.Tensor:
            projected = project(concepts.embeddings.to(device=like.device, dtype=like.dtype))
            return projected.unsqueeze(0).expand(like.shape[0], -1, -1)

        return ConceptStreamSpec(
            enter=enter,
            projections=ConceptProjections("to_q", "to_k", "to_v", "norm_q", "norm_k", ("to_out.0", "to_out.1")),
            modulation=CogVideoXModulation(),
        )

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt, as the pipeline encodes it: the prompt sequence's first slots."""
        return locate_prompt_words(self.pipe.tokenizer, prompt, concepts, reduction, max_length=self.prompt_tokens,
                                   model="CogVideoX")

    # ---------------------------------------------------------------- geometry
    def geometry(self) -> Geometry:
        config = self.transformer.config
        spatial = self.spatial_compression
        native = (int(config.sample_frames), int(config.sample_height) * spatial, int(config.sample_width) * spatial)
        return Geometry(
            model="CogVideoX", native=native, temporal_compression=self.temporal_compression,
            spatial_compression=spatial, patch=int(config.patch_size), temporal_patch=int(config.patch_size_t or 1),
            fixed_size=bool(config.use_learned_positional_embeddings),
            at_most_native_size=bool(config.patch_size_t and config.use_rotary_positional_embeddings),
            pad_latent_frames=bool(config.patch_size_t),
        )

    # ---------------------------------------------------------------- running
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "max_sequence_length": self.prompt_tokens,
        }

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        latents = latents.permute(0, 2, 1, 3, 4).to(self.dtype)
        _, padding = self.geometry().latent_frames(video.shape[0])
        # 1.5: lead with copies of the first latent frame, as many as the pipeline pads.
        return torch.cat([latents[:, :1]] * padding + [latents], dim=1)

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        pipe, transformer = self.pipe, self.transformer
        cfg = guidance_scale > 1.0
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=self.prompt_tokens, device=self.device, dtype=self.dtype,
        )
        if cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        _, latent_frames, _, latent_height, latent_width = latents.shape
        rotary = None
        if transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(
                latent_height * self.spatial_compression, latent_width * self.spatial_compression,
                latent_frames, self.device,
            )
        # Image-to-video: the first latent frame conditions, later frames are zero (as the
        # pipeline pads an encoded image); the transformer sees [latents ; image_latents].
        image_latents = None
        if self.image_to_video:
            image_latents = torch.cat([latents[:, :1], torch.zeros_like(latents[:, 1:])], dim=1)
        ofs = None
        if transformer.config.ofs_embed_dim is not None:
            ofs = latents.new_full((1,), 2.0)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([current] * 2) if cfg else current
            model_input = pipe.scheduler.scale_model_input(model_input, timestep)
            if image_latents is not None:
                conditioning = torch.cat([image_latents] * 2) if cfg else image_latents
                model_input = torch.cat([model_input, conditioning], dim=2)
            with transformer.cache_context("cond_uncond" if cfg else "cond"):
                output = transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=prompt_embeds,
                    timestep=timestep.expand(model_input.shape[0]),
                    ofs=ofs,
                    image_rotary_emb=rotary,
                    return_dict=False,
                )[0].float()
            if cfg:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            return output

        return call

    def scheduler_step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        if "old_pred_original_sample" in inspect.signature(scheduler.step).parameters:
            raise NotImplementedError(
                "renoising over several steps needs CogVideoXDDIMScheduler; the DPM scheduler's "
                "multistep state is not supported: use num_renoise_steps=1 or swap the scheduler"
            )
        return scheduler.step(model_output, timestep, latents, return_dict=False)[0]
