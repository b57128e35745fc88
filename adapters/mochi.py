"""Mochi 1 (``MochiPipeline``, text-to-video): sites, concept stream, prompt mask, geometry, schedule.

Sites: ``transformer_blocks.{i}.attn1`` is ``blocks.{i}.attn``, a joint attention of two streams of
different widths (visual ``dim``, prompt ``pooled_projection_dim``), each with its own q/k/v
projections (``to_*`` / ``add_*_proj``) into the same heads and per-head RMS q/k norms; rotary
(learned ``pos_frequencies``) turns the visual q/k only. Token order: the ``F*h*w`` visual tokens,
frame-major, then the ``T`` = 256 prompt slots. The stock ``MochiAttnProcessor2_0`` calls SDPA
itself, per sample, over the visual tokens and that sample's *unmasked* prompt tokens, zero-padding
the outputs at the end; :class:`MochiSiteProcessor` repeats it operation for operation (hook
tensors hold every slot, ``[B, heads, F*h*w + T, head_dim]``) with
:func:`vidinterp.processors.attention` (the user's backend when set). ``encoder_attention_mask`` is
:attr:`TokenLayout.prompt_mask`. ``MochiAttention`` has no ``set_processor`` (a plain attribute),
which :func:`vidinterp.install.set_processor` assigns directly.

Concept stream: concepts enter through ``time_embed.caption_proj``; each block updates them with
the prompt stream's weights (:class:`MochiModulation`: ``norm1_context``, RMS norm times ``1 +
scale``; ``add_*_proj``, ``norm_added_*``, ``to_add_out``; the tanh-gated RMS-normalised updates
``norm2_context`` .. ``norm4_context`` around ``ff_context``). The last block is
``context_pre_only`` (``MochiLayerNormContinuous``, no ``to_add_out``): the concepts attend there
and are not updated.

CFG: one batched call, negative rows first, ``cache_context("cond_uncond")``. Schedule: the
pipeline's linear-quadratic sigmas for any resolution; Mochi's scheduler stores them inverted
(``invert_sigmas``), which :meth:`MochiAdapter.noise_latents` undoes. Geometry: the pipeline
hard-codes 6x temporal and 8x spatial VAE compression (``6n + 1`` frames).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidinterp.adapter import (Adapter, ConceptReduction, ConceptTokens, joint_site_specs, reduce_concept_rows,
                               word_pieces)
from vidinterp.concept_stream import ConceptProjections, ConceptStreamSpec, StreamModulation
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout
from vidinterp.processors import SiteObserver, SiteProcessor, attention
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

__all__ = ["MochiAdapter", "MochiSiteProcessor", "MochiModulation"]

#: the pipeline's sigma schedule: linear to this noise drop over the first half, then quadratic
THRESHOLD_NOISE = 0.025
PROJECTIONS = ConceptProjections("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k",
                                 ("to_add_out",))


class MochiModulation(StreamModulation):
    """A Mochi block's prompt-stream modulation (``norm1_context``) and its tanh-gated updates."""

    def before(self, block, hidden, temb):
        if block.context_pre_only:
            return block.norm1_context(hidden, temb), None
        normed, gate_msa, scale_mlp, gate_mlp = block.norm1_context(hidden, temb)
        return normed, (gate_msa, scale_mlp, gate_mlp)

    def after(self, block, hidden, attention_output, state):
        if state is None:
            return hidden
        gate_msa, scale_mlp, gate_mlp = state
        hidden = hidden + block.norm2_context(attention_output, torch.tanh(gate_msa).unsqueeze(1))
        normed = block.norm3_context(hidden, (1 + scale_mlp.unsqueeze(1).to(torch.float32)))
        return hidden + block.norm4_context(block.ff_context(normed), torch.tanh(gate_mlp).unsqueeze(1))


class MochiSiteProcessor(SiteProcessor):
    """``MochiAttnProcessor2_0``, operation for operation, with hook points."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb: torch.Tensor | None = None):
        def heads(tensor: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:  # [B, N, H, d], normed
            tensor = tensor.unflatten(2, (attn.heads, -1))
            return tensor if norm is None else norm(tensor)

        query, key = heads(attn.to_q(hidden_states), attn.norm_q), heads(attn.to_k(hidden_states), attn.norm_k)
        value = heads(attn.to_v(hidden_states), None)
        encoder_query = heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)
        encoder_key = heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)
        encoder_value = heads(attn.add_v_proj(encoder_hidden_states), None)
        if image_rotary_emb is not None:
            def rotate(x, freqs_cos, freqs_sin):
                x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
                cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
                sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
                return torch.stack([cos, sin], dim=-1).flatten(-2)

            query, key = rotate(query, *image_rotary_emb), rotate(key, *image_rotary_emb)
        visual, prompt = query.size(1), encoder_query.size(1)
        query, key, value = (torch.cat([a, b], dim=1).transpose(1, 2) for a, b in
                             ((query, encoder_query), (key, encoder_key), (value, encoder_value)))

        def compute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outputs = []
            for row in range(q.shape[0]):  # the visual tokens and this row's unmasked prompt tokens
                kept = torch.nonzero(attention_mask[row].flatten(), as_tuple=False).flatten()
                kept = torch.cat([torch.arange(visual, device=kept.device), visual + kept])
                output = attention(self.original, q[row:row + 1, :, kept], k[row:row + 1, :, kept],
                                   v[row:row + 1, :, kept])
                outputs.append(F.pad(output, (0, 0, 0, visual + prompt - output.size(2))))
            return torch.cat(outputs, dim=0)

        output = self.attend(attn, query, key, value, compute)
        hidden_states, encoder_hidden_states = output.transpose(1, 2).flatten(2, 3).split_with_sizes(
            (visual, prompt), dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states



@register_adapter
class MochiAdapter(Adapter):
    """Mochi 1 ``MochiPipeline`` (text-to-video)."""

    family = "mochi"
    transformer_class_names = ("MochiTransformer3DModel",)
    token_order = "visual_first"
    #: the linear-quadratic schedule keeps sigma above 0.9 for the first 60% of the steps: renoise
    #: from step 40 of 50 (sigma 0.62) instead
    default_renoise_fraction = 0.8

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(self.transformer, [("transformer_blocks", "attn1", True)])

    def make_processor(self, spec: SiteSpec, original: object, observer: SiteObserver) -> SiteProcessor:
        """The stock processor calls SDPA itself, so it is rewritten; another processor type is
        refused (its behaviour would be lost)."""
        from diffusers.models.attention_processor import MochiAttnProcessor2_0

        if type(original) is not MochiAttnProcessor2_0:
            raise NotImplementedError(f"{spec.module_path} uses {type(original).__name__}; vidinterp's Mochi sites "
                                      f"rewrite MochiAttnProcessor2_0 (it calls SDPA directly)")
        return MochiSiteProcessor(spec, original, observer)

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """Visual tokens then prompt slots; the call's ``encoder_attention_mask`` is the prompt mask."""
        batch, _, latent_frames, latent_height, latent_width = arguments["hidden_states"].shape
        return self.latent_layout(batch, latent_frames, latent_height, latent_width,
                                  arguments["encoder_hidden_states"].shape[1], pixel_frames,
                                  prompt_mask=arguments["encoder_attention_mask"].bool())

    # ---------------------------------------------------------------- text
    @property
    def prompt_tokens(self) -> int:
        """Prompt slots: the pipeline's ``max_sequence_length`` default."""
        return int(self.call_default("max_sequence_length"))

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is encoded alone as the pipeline encodes a prompt (T5, no BOS), then
        reduced over its sub-tokens."""
        ids_and_pieces = [word_pieces(self.pipe.tokenizer, concept) for concept in concepts]
        with torch.no_grad():
            hidden, _ = self.pipe._get_t5_prompt_embeds(prompt=list(concepts), max_sequence_length=self.prompt_tokens,
                                                        device=self.device)
        positions = [list(range(min(len(ids), self.prompt_tokens - 1))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        return ConceptTokens(list(concepts), reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction),
                             pieces, reduction)

    def concept_stream(self, concepts: ConceptTokens) -> ConceptStreamSpec:
        project = self.transformer.time_embed.caption_proj

        def enter(arguments: dict[str, Any], rows: slice, like: torch.Tensor) -> torch.Tensor:
            projected = project(concepts.embeddings.to(device=like.device, dtype=like.dtype))
            return projected.unsqueeze(0).expand(like.shape[0], -1, -1)

        return ConceptStreamSpec(enter=enter, projections=PROJECTIONS, modulation=MochiModulation())

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt, as the pipeline encodes it (no cleaning)."""
        return locate_prompt_words(self.pipe.tokenizer, prompt, concepts, reduction, max_length=self.prompt_tokens,
                                   model="Mochi")

    # ---------------------------------------------------------------- geometry
    @property
    def temporal_compression(self) -> int:
        return int(self.pipe.vae_temporal_scale_factor)

    @property
    def spatial_compression(self) -> int:
        return int(self.pipe.vae_spatial_scale_factor)

    def geometry(self) -> Geometry:
        """Native geometry: the transformer config's ``native_geometry`` when set (tiny pipelines),
        else the pipeline's defaults (19 frames at 480x848)."""
        native = self.transformer.config.get("native_geometry") or (
            self.call_default("num_frames"), self.pipe.default_height, self.pipe.default_width)
        return Geometry(model="Mochi", native=tuple(int(size) for size in native),
                        temporal_compression=self.temporal_compression, spatial_compression=self.spatial_compression,
                        patch=int(self.transformer.config.patch_size), pixel_multiple=8)

    # ---------------------------------------------------------------- running
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"num_frames": num_frames, "height": height, "width": width, "max_sequence_length": self.prompt_tokens}

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline's linear-quadratic sigmas, set on its scheduler."""
        from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule, retrieve_timesteps

        sigmas = np.array(linear_quadratic_schedule(num_inference_steps, THRESHOLD_NOISE))
        timesteps, _ = retrieve_timesteps(self.pipe.scheduler, num_inference_steps, self.device, None, sigmas)
        return timesteps.clone()

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x + sigma noise`` at the schedule's sigma of ``timestep`` (the scheduler
        stores ``1 - sigma`` when ``invert_sigmas``)."""
        scheduler = self.pipe.scheduler
        index = scheduler.index_for_timestep(timestep.reshape(()), scheduler.timesteps.to(timestep.device))
        sigma = scheduler.sigmas[index].to(latents.device, torch.float32)
        if scheduler.config.get("invert_sigmas"):
            sigma = 1.0 - sigma
        return ((1.0 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)

    def scheduler_step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """As the pipeline: the step in float32, cast back to the latents' dtype."""
        return self.pipe.scheduler.step(model_output, timestep, latents.to(torch.float32),
                                        return_dict=False)[0].to(latents.dtype)

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[frames, 3, H, W]`` -> latents ``[1, C, F, h, w]``, the inverse of the pipeline's
        decoding: ``(z - mean) * scaling_factor / std`` (``z * scaling_factor`` without them)."""
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        config = vae.config
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:  # as the decode
            mean, std = (torch.tensor(values).view(1, -1, 1, 1, 1).to(latents) for values in
                         (config.latents_mean, config.latents_std))
            latents = (latents - mean * config.scaling_factor) / std
        return latents.to(self.dtype)

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """As the pipeline's loop: one call (``guidance_scale > 1``: negative rows first) inside
        ``cache_context("cond_uncond")``, the timestep in the latents' dtype, CFG in float32."""
        pipe, transformer = self.pipe, self.transformer
        cfg = guidance_scale > 1.0
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=self.prompt_tokens, device=self.device)
        if cfg:
            embeds, mask = torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([current] * 2) if cfg else current
            with transformer.cache_context("cond_uncond"):
                output = transformer(hidden_states=model_input, encoder_hidden_states=embeds,
                                     timestep=timestep.expand(model_input.shape[0]).to(current.dtype),
                                     encoder_attention_mask=mask, return_dict=False)[0].to(torch.float32)
            if cfg:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            return output

        return call
