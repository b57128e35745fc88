"""Tiny SkyReels-V2 pipelines (text-to-video and image-to-video): the real diffusers classes with
tiny configs and random weights, built offline (see :mod:`vidinterp.testing.tiny`).

SkyReels-V2 is Wan-derived: the builder takes the tiny Wan pipeline's parts
(:func:`vidinterp.testing.tiny_wan.tiny_wan`: UMT5, ``AutoencoderKLWan``, UniPC, CLIP image
encoder) and puts a ``SkyReelsV2Transformer3DModel`` of the same config, with the Wan
transformer's weights, into ``SkyReelsV2Pipeline`` / ``SkyReelsV2ImageToVideoPipeline``.
"""

from __future__ import annotations

import types
from typing import Any

from vidinterp.testing.tiny import register_tiny
from vidinterp.testing.tiny_wan import tiny_wan

__all__ = ["tiny_skyreels_v2", "VARIANTS", "patch_missing_ftfy"]

#: The named variants the adapter conformance checks run, one per pipeline.
VARIANTS = ("t2v", "i2v")


@register_tiny("skyreels_v2", variants=VARIANTS)
def tiny_skyreels_v2(variant: str = "t2v", num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny SkyReels-V2 pipeline: ``variant`` ``"t2v"`` (``SkyReelsV2Pipeline``) or ``"i2v"``
    (``SkyReelsV2ImageToVideoPipeline``). Native geometry 9 frames at 32x48 pixels (3 latent
    frames of 2x3 tokens), prompts in 512 slots, as the tiny Wan pipelines. ``overrides`` go to
    the transformer config."""
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny SkyReels-V2 variant {variant!r}; expected one of {VARIANTS}")
    wan = tiny_wan(variant=variant, num_layers=num_layers, seed=seed, **overrides)
    config = {key: value for key, value in wan.transformer.config.items()
              if not key.startswith("_") and key != "native_geometry"}
    transformer = SkyReelsV2Transformer3DModel(**config).eval()
    transformer.load_state_dict(wan.transformer.state_dict())
    transformer.register_to_config(native_geometry=tuple(wan.transformer.config.native_geometry))
    patch_missing_ftfy()
    parts = dict(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder, vae=wan.vae, transformer=transformer,
                 scheduler=wan.scheduler)
    if variant == "t2v":
        pipe = SkyReelsV2Pipeline(**parts)
    else:
        pipe = SkyReelsV2ImageToVideoPipeline(image_encoder=wan.image_encoder, image_processor=wan.image_processor,
                                              **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def patch_missing_ftfy() -> None:
    """diffusers 0.42's SkyReels-V2 pipelines call ``ftfy.fix_text`` in ``basic_clean`` even when
    ftfy is not installed (Wan's ``pipeline_wan`` guards it). Without ftfy, give those modules a
    stand-in whose ``fix_text`` is the identity, which is what ``pipeline_wan`` does then."""
    from diffusers.pipelines.skyreels_v2 import pipeline_skyreels_v2, pipeline_skyreels_v2_i2v

    for module in (pipeline_skyreels_v2, pipeline_skyreels_v2_i2v):
        if not hasattr(module, "ftfy"):
            module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
