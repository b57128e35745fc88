"""An explicit, documented latent mapping that stands in for a VAE in the shapes model.

The shapes clips are flat-coloured shapes on black, so a learned autoencoder is unnecessary:
:class:`ShapesLatentMapping` is a fixed (parameter-free) map between pixels and latents with
the interface ``CogVideoXPipeline`` and the CogVideoX adapter use from a VAE
(``config.block_out_channels``, ``config.temporal_compression_ratio``,
``config.scaling_factor``, ``encode(x).latent_dist.sample(generator)``, ``decode(z).sample``).

Mapping (pixels ``x`` in ``[-1, 1]``, ``[B, 3, F, H, W]``; no spatial or temporal compression,
so ``vae_scale_factor_spatial == 1`` and ``vae_scale_factor_temporal == 1``)::

    rgb01     = (x + 1) / 2                       # [0, 1], the black background is 0
    occupancy = 1[max_channel(rgb01) > 0.1]       # 1 on object pixels, 0 on background
    latent    = [rgb01 ; occupancy]               # 4 channels, [B, 4, F, H, W]

The pipeline multiplies by ``scaling_factor`` after encoding (the adapter does, as for every
CogVideoX VAE) and divides by it before decoding. Decoding drops the occupancy channel and
returns ``2 * clamp(rgb01, 0, 1) - 1``. The encoder is deterministic: ``latent_dist`` is a
zero-variance ``DiagonalGaussianDistribution``, so ``sample(generator)`` returns the mean.
Spatial detail reaches the transformer through its patch embedding (patch 4: one token covers
4x4 pixels of one frame).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["ShapesLatentMapping", "LATENT_CHANNELS"]

#: RGB plus an occupancy channel.
LATENT_CHANNELS = 4


class ShapesLatentMapping(ModelMixin, ConfigMixin):
    """Parameter-free pixel <-> latent map used as the ``vae`` of the shapes pipeline.

    Args:
        scaling_factor: multiplies latents after encoding (``CogVideoXPipeline`` divides by it
            before decoding); 2.0 puts object pixels near the unit scale of the noise.
        occupancy_threshold: a pixel is "object" when its brightest channel (in ``[0, 1]``)
            exceeds this.
        block_out_channels: only its length matters: ``CogVideoXPipeline`` derives
            ``vae_scale_factor_spatial = 2 ** (len(block_out_channels) - 1)`` = 1.
        temporal_compression_ratio: 1 (every pixel frame is a latent frame).
        latent_channels: 4.
    """

    @register_to_config
    def __init__(
        self,
        scaling_factor: float = 2.0,
        occupancy_threshold: float = 0.1,
        block_out_channels: tuple[int, ...] = (LATENT_CHANNELS,),
        temporal_compression_ratio: int = 1,
        latent_channels: int = LATENT_CHANNELS,
    ) -> None:
        super().__init__()
        if len(block_out_channels) != 1 or temporal_compression_ratio != 1 or latent_channels != LATENT_CHANNELS:
            raise ValueError(
                "ShapesLatentMapping has no spatial or temporal compression and 4 latent channels: "
                f"need len(block_out_channels) == 1, temporal_compression_ratio == 1, latent_channels == 4; got "
                f"{block_out_channels}, {temporal_compression_ratio}, {latent_channels}"
            )
        # a buffer so that .device / .dtype and .to() work like on a real VAE
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:  # ModelMixin looks for parameters; this module has none
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``[B, 4, F, H, W]`` of pixels ``[B, 3, F, H, W]`` in ``[-1, 1]``."""
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [batch, 3, frames, height, width], got {list(pixels.shape)}")
        rgb = ((pixels.float() + 1) / 2).clamp(0, 1)
        occupancy = (rgb.amax(dim=1, keepdim=True) > self.config.occupancy_threshold).float()
        return torch.cat([rgb, occupancy], dim=1).to(pixels.dtype)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """``AutoencoderKLOutput`` whose ``latent_dist`` is deterministic (zero variance)."""
        mean = self.latents(x)
        parameters = torch.cat([mean, torch.full_like(mean, -30.0)], dim=1)
        distribution = DiagonalGaussianDistribution(parameters, deterministic=True)
        if not return_dict:
            return (distribution,)
        return AutoencoderKLOutput(latent_dist=distribution)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Pixels ``[B, 3, F, H, W]`` in ``[-1, 1]`` from unscaled latents ``[B, 4, F, H, W]``."""
        if z.ndim != 5 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"expected latents [batch, 4, frames, height, width], got {list(z.shape)}")
        sample = z[:, :3].clamp(0, 1) * 2 - 1
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(sample).latent_dist.mode()).sample
