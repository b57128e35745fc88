"""A parameter-free colour-to-latent mapping that stands in for the VAE of planted pipelines.

Planted models (:mod:`vidinterp.testing.planted`) need to know exactly which latent cells hold
which colour, so their VAE is this fixed, documented map instead of a learned autoencoder.

Encoding pixels ``x`` in ``[-1, 1]`` (video ``[B, 3, F, H, W]`` or image ``[B, 3, H, W]``):

1. every pixel takes the nearest colour of :data:`PALETTE` (the shapes clips' colours, and black
   for the background) by Euclidean RGB distance;
2. time (videos only, causal like the video VAEs): latent frame ``0`` is pixel frame ``0`` and
   latent frame ``l >= 1`` is pixel frame ``k * l``, the *last* pixel frame of the span
   ``k*l - k + 1 .. k*l`` that the latent frame stands for (``k`` = ``temporal_compression``);
   ``F`` must be ``k * n + 1``;
3. space: each latent cell is the mean over its ``s x s`` pixels (``s`` = ``spatial_compression``);
4. channels (``LATENT_CHANNELS`` = 8): ``amplitude`` times the fraction of the cell's pixels of
   each palette colour in :data:`COLOR_CHANNELS` order (6 channels), ``amplitude`` times the
   occupancy (fraction of non-background pixels), and a *clock* ``clock_step * l`` that tells
   latent frames apart (0 for images).

Decoding repeats each latent frame over its pixel span, upsamples each cell to ``s x s`` pixels
and paints ``sum_c fraction_c * rgb_c``; the clock and occupancy channels are not drawn.
``scaling_factor = 1`` and ``shift_factor = 0``, and ``latents_mean = 0`` and ``latents_std =
1`` for pipelines that normalise latents, so a pipeline's latents are exactly these values.
The encoder is deterministic: ``latent_dist.sample(generator)`` returns the mean.

The config carries every attribute the supported pipelines read from their VAE
(``block_out_channels`` whose length gives the spatial factor ``2 ** (len - 1)``,
``temporal_compression_ratio``, ``scale_factor_spatial`` / ``scale_factor_temporal``, ``z_dim``,
``latents_mean`` / ``latents_std``, ``scaling_factor``, ``shift_factor``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from vidinterp.datasets.shapes import COLORS

__all__ = ["PlantedLatentMapping", "PALETTE", "COLOR_CHANNELS", "LATENT_CHANNELS", "OCCUPANCY_CHANNEL", "CLOCK_CHANNEL"]

#: Latent channel of each palette colour, in this order.
COLOR_CHANNELS: tuple[str, ...] = tuple(COLORS)
#: Colours a pixel is snapped to: the shapes palette, then the black background.
PALETTE: dict[str, tuple[int, int, int]] = {**COLORS, "background": (0, 0, 0)}
OCCUPANCY_CHANNEL = len(COLOR_CHANNELS)
CLOCK_CHANNEL = OCCUPANCY_CHANNEL + 1
LATENT_CHANNELS = CLOCK_CHANNEL + 1


class PlantedLatentMapping(ModelMixin, ConfigMixin):
    """The VAE of planted pipelines: a fixed pixel <-> latent map (see the module docstring).

    Args:
        spatial_compression: pixels per latent cell side ``s`` (a power of two).
        temporal_compression: pixel frames per latent frame ``k`` (videos).
        amplitude: latent value of a cell filled with one colour.
        clock_step: clock value added per latent frame.
    """

    @register_to_config
    def __init__(
        self,
        spatial_compression: int = 4,
        temporal_compression: int = 4,
        amplitude: float = 16.0,
        clock_step: float = 4.0,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        block_out_channels: tuple[int, ...] | None = None,
        temporal_compression_ratio: int | None = None,
        scale_factor_spatial: int | None = None,
        scale_factor_temporal: int | None = None,
        z_dim: int = LATENT_CHANNELS,
        latent_channels: int = LATENT_CHANNELS,
        latents_mean: tuple[float, ...] = (0.0,) * LATENT_CHANNELS,
        latents_std: tuple[float, ...] = (1.0,) * LATENT_CHANNELS,
    ) -> None:
        super().__init__()
        levels = math.log2(spatial_compression)
        if spatial_compression < 1 or levels != int(levels):
            raise ValueError(f"spatial_compression must be a power of two, got {spatial_compression}")
        if temporal_compression < 1:
            raise ValueError(f"temporal_compression must be >= 1, got {temporal_compression}")
        # Pipelines read the compression factors under several names: keep them all consistent.
        self.register_to_config(
            block_out_channels=(LATENT_CHANNELS,) * (int(levels) + 1),
            temporal_compression_ratio=temporal_compression,
            scale_factor_spatial=spatial_compression,
            scale_factor_temporal=temporal_compression,
        )
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    # diffusers' ModelMixin reads these from parameters; this module has none.
    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def spatial_compression_ratio(self) -> int:
        return int(self.config.spatial_compression)

    @property
    def temporal_compression_ratio(self) -> int:
        return int(self.config.temporal_compression)

    # ---------------------------------------------------------------- mapping
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 8, L, h, w]`` (video) or ``[B, 8, h, w]`` (image) of pixels in
        ``[-1, 1]``."""
        image = pixels.ndim == 4
        if image:
            pixels = pixels.unsqueeze(2)
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [batch, 3, frames, height, width] or [batch, 3, height, width], "
                             f"got {list(pixels.shape)}")
        k, s = self.config.temporal_compression, self.config.spatial_compression
        frames, height, width = pixels.shape[2:]
        if not image and (frames - 1) % k:
            raise ValueError(f"the planted latent mapping needs {k}*n + 1 frames, got {frames}")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s} pixels, got {height}x{width}")
        sampled = pixels[:, :, :: (1 if image else k)].float()
        rgb = (sampled + 1.0) * 127.5  # [B, 3, L, H, W]
        palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32, device=rgb.device)  # [P, 3]
        distance = (rgb.unsqueeze(1) - palette[None, :, :, None, None, None]).square().sum(dim=2)
        nearest = F.one_hot(distance.argmin(dim=1), len(PALETTE)).permute(0, 4, 1, 2, 3).float()  # [B, P, L, H, W]
        colours = nearest[:, : len(COLOR_CHANNELS)]
        occupancy = colours.sum(dim=1, keepdim=True)
        cells = F.avg_pool3d(torch.cat([colours, occupancy], dim=1), kernel_size=(1, s, s))
        amplitude = self.config.amplitude
        clock = torch.arange(cells.shape[2], dtype=torch.float32, device=cells.device) * self.config.clock_step
        clock = clock.view(1, 1, -1, 1, 1).expand(cells.shape[0], 1, -1, *cells.shape[3:])
        latents = torch.cat([cells * amplitude, clock], dim=1).to(pixels.dtype)
        return latents[:, :, 0] if image else latents

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """``AutoencoderKLOutput`` whose ``latent_dist`` is deterministic (zero variance)."""
        mean = self.latents(x)
        distribution = DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, -30.0)], dim=1),
                                                    deterministic=True)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs):
        """Pixels in ``[-1, 1]``: ``[B, 3, k*(L-1)+1, s*h, s*w]`` from video latents, ``[B, 3,
        s*h, s*w]`` from image latents."""
        image = z.ndim == 4
        if image:
            z = z.unsqueeze(2)
        if z.ndim != 5 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"expected latents [batch, {LATENT_CHANNELS}, frames, height, width], got {list(z.shape)}")
        k, s = self.config.temporal_compression, self.config.spatial_compression
        fractions = (z[:, : len(COLOR_CHANNELS)].float() / self.config.amplitude).clamp(0, 1)
        rgb = torch.tensor([COLORS[name] for name in COLOR_CHANNELS], dtype=torch.float32, device=z.device)
        painted = torch.einsum("bclhw,cr->brlhw", fractions, rgb).clamp(0, 255) / 127.5 - 1.0
        painted = painted.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)
        if image:
            sample = painted[:, :, 0]
        else:
            repeats = torch.tensor([1] + [k] * (painted.shape[2] - 1), device=z.device)
            sample = painted.repeat_interleave(repeats, dim=2)
        sample = sample.to(z.dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(sample).latent_dist.mode()).sample
