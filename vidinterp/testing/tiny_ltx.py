"""Tiny LTX-Video pipelines (text-to-video and image-to-video): the real diffusers classes with
tiny configs and random weights, built offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.testing.tiny import register_tiny, tiny_t5_encoder, word_tokenizer

__all__ = ["tiny_ltx", "VARIANTS"]

#: The named variants the adapter conformance checks run, one per pipeline.
VARIANTS = ("t2v", "i2v")


@register_tiny("ltx", variants=VARIANTS)
def tiny_ltx(variant: str = "t2v", num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny LTX-Video pipeline: ``variant`` ``"t2v"`` (``LTXPipeline``) or ``"i2v"``
    (``LTXImageToVideoPipeline``: the first latent frame is the encoded image, kept clean).

    The VAE (``AutoencoderKLLTXVideo``) compresses 8x in space (patch 2, two scaling blocks) and
    4x in time, with non-trivial ``latents_mean`` / ``latents_std``; the transformer has 2 heads
    of 16 channels and patch 1. Native geometry 9 frames at 32x64 pixels (3 latent frames of 4x8
    tokens); prompts are T5-encoded to the pipelines' 128 slots. The scheduler shifts its
    sigmas with the video's token count (``use_dynamic_shifting``, LTX-Video's config).
    ``overrides`` go to the transformer config."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny LTX variant {variant!r}; expected one of {VARIANTS}")
    latent_channels, text_dim, heads, head_dim = 4, 32, 2, 16
    config: dict[str, Any] = dict(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=heads,
        attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, num_layers=num_layers,
        caption_channels=text_dim,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(**config).eval()
    transformer.register_to_config(native_geometry=(9, 32, 64))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLLTXVideo(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        down_block_types=("LTXVideoDownBlock3D",) * 3, layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, False),
        decoder_spatio_temporal_scaling=(True, True, False), decoder_inject_noise=(False,) * 4,
        upsample_residual=(False,) * 3, upsample_factor=(1,) * 3, patch_size=2, patch_size_t=1,
    ).eval()
    with torch.no_grad():
        vae.latents_mean.copy_(torch.tensor([0.5, -0.3, 0.1, 0.2]))
        vae.latents_std.copy_(torch.tensor([2.0, 1.5, 0.7, 1.2]))
    tokenizer = word_tokenizer()
    text_encoder = tiny_t5_encoder(len(tokenizer), text_dim, seed=seed + 2)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )
    pipeline = LTXPipeline if variant == "t2v" else LTXImageToVideoPipeline
    pipe = pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                    transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe

