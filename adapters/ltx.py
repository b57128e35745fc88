"""LTX-Video (text-to-video and image-to-video): sites, prompt-word concepts, geometry, pipelines.

LTX-Video is a cross-attention DiT. Every block ``blocks.{l}`` (``transformer_blocks.{l}``) has
two sites:

* ``blocks.{l}.attn`` (``attn1``, kind ``"self"``): the ``F*h*w`` visual tokens attend to each
  other; ``hook_q``/``hook_k`` after the q/k RMS norm (one norm across all heads) and the 3-D
  rotary embedding, which spans all heads (each head has its own frequencies).
* ``blocks.{l}.cross_attn`` (``attn2``, kind ``"cross"``): visual queries (``hook_q``,
  ``hook_z``: ``F*h*w`` tokens; the query reads the residual stream itself, not a normalised
  copy) attend to the ``T`` prompt tokens (``hook_k``, ``hook_v``; ``T`` =
  ``max_sequence_length`` slots, padding included). No rotary. The model masks the padded
  prompt slots (``encoder_attention_mask``), so :attr:`TokenLayout.prompt_mask` says which slots
  it attends to.

Token order: each tensor indexes its own tokens from 0 (``"separate"``); the transformer takes
the latents packed ``[B, F*h*w, C]``, frame-major, with the latent grid as call arguments
(``num_frames``, ``height``, ``width``), which :meth:`LTXVideoAdapter.call_layout` reads.
Attention is captured where the stock processor calls diffusers' attention dispatch.

CFG: the pipelines stack the branches in one call, unconditional rows first, announced as
``cache_context("cond_uncond")``; the analyses read the second half (:mod:`vidinterp.branches`).

No concept stream (docs/methods.md, "Prompt-word concepts"): a concept must be a word (or
run of words) of the prompt; at every cross site the prompt keys and values at its T5 tokens,
reduced over sub-tokens, are the visit's concept tensors ``k``/``v``.

Geometry: ``k*n + 1`` frames (``k``: the VAE's temporal compression), heights and widths
multiples of 32 (the pipelines' check) and of the token cell. Latents are normalised with the
VAE's ``latents_mean``/``latents_std`` and stay unpacked ``[1, C, F, h, w]`` between steps;
they are packed with the pipeline's own helpers for each transformer call.

Image-to-video (``LTXImageToVideoPipeline``): the first latent frame is the VAE encoding of the
image alone, kept clean: its tokens get timestep 0 and the pipeline steps only the later frames.
Renoising conditions on the first frame of the video last passed to
:meth:`LTXVideoAdapter.encode_video`, whose latents replace latent frame 0 at every call (so
whatever the scheduler does to that frame is never read). Pipelines that place conditions by
``video_coords`` (``LTXConditionPipeline``) are not supported.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from vidinterp.adapter import Adapter, ConceptReduction, ConceptTokens, prompt_word_concepts
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout, token_layout
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

__all__ = ["LTXVideoAdapter"]

#: heights and widths the LTX pipelines accept are multiples of this (their ``check_inputs``)
PIXEL_MULTIPLE = 32


@register_adapter
class LTXVideoAdapter(Adapter):
    """LTX-Video ``LTXPipeline`` (text-to-video) and ``LTXImageToVideoPipeline`` (image-to-video)."""

    family = "ltx"
    transformer_class_names = ("LTXVideoTransformer3DModel",)
    token_order = "separate"

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        #: image-to-video renoising: normalised latents ``[1, C, 1, h, w]`` of the last video's first frame
        self._image_latents: torch.Tensor | None = None

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        specs = []
        for index, block in enumerate(self.transformer.transformer_blocks):
            for name, path, kind in (("attn", "attn1", "self"), ("cross_attn", "attn2", "cross")):
                attention = getattr(block, path)
                specs.append(SiteSpec(name=f"blocks.{index}.{name}", layer=index,
                                      module_path=f"transformer_blocks.{index}.{path}", heads=attention.heads,
                                      head_dim=attention.head_dim, kind=kind))
        return specs

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """Visual tokens ``[0, F*h*w)`` from the call's latent grid, prompt tokens ``[0, T)``; a
        2-D ``encoder_attention_mask`` becomes the prompt mask."""
        grid = [arguments[name] for name in ("num_frames", "height", "width")]
        if None in grid:
            raise ValueError("vidinterp reads LTX-Video's token grid from num_frames/height/width; calls that "
                             "place tokens by video_coords (LTXConditionPipeline) are not supported")
        geometry, mask = self.geometry(), arguments["encoder_attention_mask"]
        frames = grid[0] // geometry.temporal_patch
        return token_layout(frames, grid[1] // geometry.patch, grid[2] // geometry.patch,
                            arguments["encoder_hidden_states"].shape[1], self.token_order,
                            batch=arguments["hidden_states"].shape[0],
                            frame_spans=self.frame_spans(frames, pixel_frames),
                            pixels_per_token=(geometry.token_cell, geometry.token_cell),
                            prompt_mask=mask.bool() if mask is not None and mask.ndim == 2 else None)

    # ---------------------------------------------------------------- text
    @property
    def max_text_length(self) -> int:
        """Prompt-token slots ``T`` the pipeline encodes to (its ``max_sequence_length`` default)."""
        return int(self.call_default("max_sequence_length"))

    @property
    def prompt_tokens(self) -> int:
        return self.max_text_length

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """No concept stream: see :func:`~vidinterp.adapter.prompt_word_concepts`."""
        return prompt_word_concepts(self.pipe.tokenizer, concepts, reduction)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt, as the pipeline tokenizes it (no cleaning)."""
        return locate_prompt_words(self.pipe.tokenizer, prompt, concepts, reduction,
                                   max_length=self.max_text_length, model="LTX-Video (no concept stream)")

    # ---------------------------------------------------------------- geometry
    @property
    def temporal_compression(self) -> int:
        return int(self.pipe.vae_temporal_compression_ratio)

    @property
    def spatial_compression(self) -> int:
        return int(self.pipe.vae_spatial_compression_ratio)

    def geometry(self) -> Geometry:
        """Native geometry: the transformer config's ``native_geometry`` when set (tiny pipelines
        set it), else the pipeline's ``__call__`` defaults (161 frames at 512x704)."""
        config = self.transformer.config
        native = config.get("native_geometry")
        if native is None:
            native = [self.call_default(name) for name in ("num_frames", "height", "width")]
        return Geometry(model="LTX-Video", native=tuple(int(size) for size in native),
                        temporal_compression=self.temporal_compression, spatial_compression=self.spatial_compression,
                        patch=int(config.patch_size), temporal_patch=int(config.patch_size_t),
                        pixel_multiple=PIXEL_MULTIPLE)

    def _latent_grid(self, geometry: tuple[int, int, int]) -> tuple[int, int, int]:
        """Latent ``(frames, rows, columns)`` of a video of pixel ``geometry``, as the pipeline
        computes them."""
        frames, height, width = geometry
        spatial = self.spatial_compression
        return (frames - 1) // self.temporal_compression + 1, height // spatial, width // spatial

    # ---------------------------------------------------------------- running
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"num_frames": num_frames, "height": height, "width": width,
                "max_sequence_length": self.max_text_length}

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The schedule for the native geometry (see :meth:`timesteps_for`)."""
        return self.timesteps_for(num_inference_steps, self.default_geometry())

    def timesteps_for(self, num_inference_steps: int, geometry: tuple[int, int, int]) -> torch.Tensor:
        """As the pipelines set it: ``sigmas = linspace(1, 1/n, n)`` shifted by ``mu`` from the
        latent cell count (with the scheduler's dynamic shifting)."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        config = self.pipe.scheduler.config
        mu = calculate_shift(int(np.prod(self._latent_grid(geometry))), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        timesteps, _ = retrieve_timesteps(self.pipe.scheduler, num_inference_steps, self.device, sigmas=sigmas, mu=mu)
        return timesteps.clone()

    def latents_from_pipeline(self, latents: torch.Tensor, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The pipeline's packed ``[B, F*h*w, C]`` latents unpacked to ``[B, C, F, h, w]``."""
        config = self.transformer.config
        return self.pipe._unpack_latents(latents, *self._latent_grid(geometry), config.patch_size, config.patch_size_t)

    def _encode(self, pixels: torch.Tensor, generator: torch.Generator | None, scaling: float) -> torch.Tensor:
        """``[1, 3, F, H, W]`` pixels -> latents normalised with ``latents_mean``/``latents_std``."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample(generator)
        return self.pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, scaling)

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[frames, 3, H, W]`` in ``[-1, 1]`` -> normalised latents ``[1, C, F, h, w]``, the
        inverse of the pipeline's decoding. Image-to-video: also encodes the first frame alone,
        as the pipeline encodes its image (normalised without the scaling factor, as it does)."""
        pixels = video.permute(1, 0, 2, 3).unsqueeze(0)
        latents = self._encode(pixels, generator, self.pipe.vae.config.scaling_factor)
        if self.image_to_video:
            self._image_latents = self._encode(pixels[:, :, :1], generator, 1.0).to(self.dtype)
        return latents.to(self.dtype)

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """As the pipeline's loop: one call (``guidance_scale > 1``: negative rows first) at the
        pipeline's default frame rate, inside ``cache_context("cond_uncond")``. Image-to-video:
        the first latent frame is replaced by the image latents and its tokens get timestep 0."""
        pipe, transformer = self.pipe, self.transformer
        cfg = guidance_scale > 1.0
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=self.max_text_length, device=self.device,
        )
        if cfg:
            embeds, mask = torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])
        _, _, frames, height, width = latents.shape
        patch, patch_t = transformer.config.patch_size, transformer.config.patch_size_t
        spatial = self.spatial_compression
        rope_scale = (self.temporal_compression / self.call_default("frame_rate"), spatial, spatial)
        image, image_tokens = self._image_condition(latents) if self.image_to_video else (None, None)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            if image is not None:
                current = torch.cat([image, current[:, :, 1:]], dim=2)
            packed = pipe._pack_latents(current, patch, patch_t)
            model_input = (torch.cat([packed] * 2) if cfg else packed).to(embeds.dtype)
            timesteps = timestep.expand(model_input.shape[0])
            if image is not None:
                timesteps = timesteps.unsqueeze(-1) * (1 - image_tokens)
            with transformer.cache_context("cond_uncond"):
                output = transformer(hidden_states=model_input, encoder_hidden_states=embeds, timestep=timesteps,
                                     encoder_attention_mask=mask, num_frames=frames, height=height, width=width,
                                     rope_interpolation_scale=rope_scale, return_dict=False)[0].float()
            if cfg:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            return pipe._unpack_latents(output, frames, height, width, patch, patch_t)

        return call

    def _image_condition(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image latents [1, C, 1, h, w], [1, F*h*w] mask: 1 on the first latent frame's
        tokens)``, the mask packed as the pipeline's ``prepare_latents`` packs it."""
        if self._image_latents is None:
            raise RuntimeError("image-to-video renoising conditions on the video's first frame: "
                               "call encode_video first")
        first_frame = torch.zeros(1, 1, *latents.shape[2:], device=latents.device)
        first_frame[:, :, 0] = 1.0
        config = self.transformer.config
        tokens = self.pipe._pack_latents(first_frame, config.patch_size, config.patch_size_t).squeeze(-1)
        return self._image_latents, tokens
