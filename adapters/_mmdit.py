"""Shared machinery of the image MM-DiT adapters (Flux, Stable Diffusion 3).

Both families have dual-stream ("joint") blocks with the same prompt-stream parts:
``norm1_context`` (adaptive norm with gates, ``AdaLayerNormZero``; SD3's last block:
``AdaLayerNormContinuous`` without gates), ``attn.add_{q,k,v}_proj``, ``attn.norm_added_{q,k}``,
``attn.to_add_out``, ``norm2_context`` and ``ff_context``: the concept stream runs on them
(:data:`MMDIT_PROJECTIONS`, :class:`~vidinterp.concept_stream.AdaNormZeroModulation`), entering
through the transformer's ``context_embedder``. :class:`ImageMMDiTAdapter` treats an image as a
video of one frame (geometry, VAE encoding with the pipeline's shift and scaling, the
flow-matching schedule as the pipeline sets it).

Files starting with an underscore are not registered as adapters.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from vidinterp.adapter import Adapter, ConceptTokens
from vidinterp.concept_stream import AdaNormZeroModulation, ConceptProjections, ConceptStreamSpec
from vidinterp.geometry import Geometry

__all__ = ["ImageMMDiTAdapter", "MMDIT_PROJECTIONS"]

#: The prompt stream's projections of a dual-stream block's attention module.
MMDIT_PROJECTIONS = ConceptProjections(
    query="add_q_proj", key="add_k_proj", value="add_v_proj", query_norm="norm_added_q", key_norm="norm_added_k",
    output=("to_add_out",), fused="to_added_qkv",
)


class ImageMMDiTAdapter(Adapter):
    """Shared parts of the image MM-DiT adapters: an image is a video of one frame.

    Subclasses set ``token_order``, implement :meth:`patch`, :attr:`prompt_tokens`,
    :meth:`_schedule_kwargs` and :meth:`call_layout`, and everything model-specific of the
    :class:`Adapter` protocol.
    """

    #: ConceptAttention renoises at the middle of a short schedule (index 2 of 4, Flux and SD3).
    default_renoise_fraction = 0.5

    # ---------------------------------------------------------------- geometry
    @abstractmethod
    def patch(self) -> int:
        """Latent cells per token side (Flux: its 2x2 packing; SD3: the patch size)."""

    def max_token_grid(self) -> int | None:
        """Largest token rows/columns the model accepts (``None``: no limit)."""
        return None

    def geometry(self) -> Geometry:
        scale = int(self.pipe.vae_scale_factor)
        size = int(self.pipe.default_sample_size) * scale
        return Geometry(model=self.family, native=(1, size, size), temporal_compression=1, spatial_compression=scale,
                        patch=self.patch(), max_grid=self.max_token_grid(), images=True)

    # ---------------------------------------------------------------- text
    def concept_stream(self, concepts: ConceptTokens) -> ConceptStreamSpec:
        project = self.transformer.context_embedder

        def enter(arguments: dict[str, Any], rows: slice, like: torch.Tensor) -> torch.Tensor:
            projected = project(concepts.embeddings.to(device=like.device, dtype=like.dtype))
            return projected.unsqueeze(0).expand(like.shape[0], -1, -1)

        return ConceptStreamSpec(enter=enter, projections=MMDIT_PROJECTIONS,
                                 modulation=AdaNormZeroModulation(clip_float16=True))

    # ---------------------------------------------------------------- running
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[1, 3, H, W]`` in ``[-1, 1]`` -> ``[1, C, H/s, W/s]`` latents, shifted and scaled as
        the pipeline expects (it decodes ``latents / scaling_factor + shift_factor``)."""
        if video.shape[0] != 1:
            raise ValueError(f"{self.family} encodes images: expected 1 frame, got {video.shape[0]}")
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return latents.to(self.dtype)

    @abstractmethod
    def _schedule_kwargs(self, num_inference_steps: int, visual_tokens: int) -> dict[str, Any]:
        """Keyword arguments the pipeline hands ``retrieve_timesteps`` (``sigmas``, ``mu``) for
        an image of ``visual_tokens`` tokens."""

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The schedule for the native geometry (see :meth:`timesteps_for`)."""
        return self.timesteps_for(num_inference_steps, self.default_geometry())

    def timesteps_for(self, num_inference_steps: int, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The schedule as the pipeline sets it for an image of pixel ``geometry``
        ``(1, height, width)``: the resolution-dependent shift ``mu`` matters when the scheduler
        uses dynamic shifting."""
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        _, height, width = geometry
        cell = self.geometry().token_cell
        visual_tokens = (height // cell) * (width // cell)
        timesteps, _ = retrieve_timesteps(
            self.pipe.scheduler, num_inference_steps, self.device,
            **self._schedule_kwargs(num_inference_steps, visual_tokens),
        )
        return timesteps.clone()

    def _shift(self, visual_tokens: int) -> float:
        """The pipelines' ``calculate_shift`` with the scheduler's configured bounds."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        return calculate_shift(
            visual_tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
