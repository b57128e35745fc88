"""Planted SkyReels-V2: ``SkyReelsV2Pipeline`` and ``SkyReelsV2Transformer3DModel`` with hand-set
weights.

The transformer is Wan2.1's (same modules, names, norms, rotary; its sinusoidal timestep
embedding differs, but the planted time projection is zero, so no block sees it), so the design is
planted Wan's (:mod:`vidinterp.testing.planted_wan`, whose docstring describes every head and
channel): the builder writes the planted Wan transformer's weights into a
``SkyReelsV2Transformer3DModel`` of the same config and keeps its text encoder, tokenizer and
scheduler. Geometry 9 frames at 48x64 pixels, 3 token frames of 6x8 tokens; localising head 1 of
the cross site of block 1, motion head 2 of block 2 (self site; cross head 2 is the clock head),
uniform block 0, identity block 3.

Only the VAE differs: the SkyReels-V2 pipelines read the compression from
``vae.temperal_downsample`` (``2 ** sum`` pixel frames per latent frame, ``2 ** len`` pixels per
latent cell), so :class:`PlantedSkyReelsLatentMapping` is the planted latent mapping with that
list.
"""

from __future__ import annotations

import dataclasses
import math

from vidinterp.testing import planted_wan
from vidinterp.testing.latent import PlantedLatentMapping
from vidinterp.testing.planted import register_planted

__all__ = ["planted_skyreels_v2", "PlantedSkyReelsLatentMapping"]


class PlantedSkyReelsLatentMapping(PlantedLatentMapping):
    """:class:`~vidinterp.testing.latent.PlantedLatentMapping` with ``temperal_downsample`` (the
    ``AutoencoderKLWan`` attribute, sic), from which the SkyReels-V2 pipelines derive their
    scale factors: ``log2(s)`` stages, the first ``log2(k)`` of them temporal."""

    @property
    def temperal_downsample(self) -> list[bool]:
        spatial, temporal = (int(math.log2(self.config[name]))
                             for name in ("spatial_compression", "temporal_compression"))
        if 2**temporal != self.config.temporal_compression or temporal > spatial:
            raise ValueError("temperal_downsample needs a power-of-two temporal compression <= the spatial one")
        return [True] * temporal + [False] * (spatial - temporal)


@register_planted("skyreels_v2")
def planted_skyreels_v2(variant: str = "t2v"):
    """Planted SkyReels-V2 pipeline (see the module docstring). ``variant``: ``"t2v"``
    (``SkyReelsV2Pipeline``, text-to-video)."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

    from vidinterp.testing.tiny_skyreels_v2 import patch_missing_ftfy

    if variant != "t2v":
        raise ValueError(f"unknown planted SkyReels-V2 variant {variant!r}; expected 't2v'")
    wan = planted_wan.planted_wan()
    config = {key: value for key, value in wan.transformer.config.items()
              if not key.startswith("_") and key != "native_geometry"}
    transformer = SkyReelsV2Transformer3DModel(**config).eval()
    transformer.load_state_dict(wan.transformer.state_dict())
    transformer.register_to_config(native_geometry=planted_wan.GEOMETRY)
    vae = PlantedSkyReelsLatentMapping(spatial_compression=planted_wan.SPATIAL,
                                       temporal_compression=planted_wan.TEMPORAL).eval()
    patch_missing_ftfy()
    pipe = SkyReelsV2Pipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=vae, transformer=transformer,
                              scheduler=wan.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = dataclasses.replace(wan.vidinterp_planted, family="skyreels_v2")
    return pipe
