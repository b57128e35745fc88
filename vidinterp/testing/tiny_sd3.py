"""Tiny Stable Diffusion 3 / 3.5 pipelines: the real diffusers classes with tiny configs and
random weights, built offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.testing.tiny import (DYNAMIC_SHIFTING, clip_word_tokenizer, register_tiny, tiny_clip_encoder,
                                    tiny_image_vae, tiny_t5_encoder, word_tokenizer)

__all__ = ["tiny_sd3", "VARIANTS"]

#: The named variants the adapter conformance checks run, one per config family.
VARIANTS = ("3", "3.5")


@register_tiny("sd3", variants=VARIANTS)
def tiny_sd3(variant: str = "3", num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny ``StableDiffusion3Pipeline``: ``variant`` ``"3"`` (no q/k norm) or ``"3.5"``
    (RMS q/k norm, dual attention in block 0; its scheduler uses dynamic shifting to exercise
    the pipeline's ``mu`` path). The last of the
    ``num_layers`` blocks is ``context_pre_only``. Native geometry 1 frame at 16x16 pixels
    (2x VAE, patch 2: 4x4 tokens); prompts of 16 CLIP + 16 T5 rows; ``overrides`` go to the
    transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny SD3 variant {variant!r}; expected one of {VARIANTS}")
    latent_channels, text_dim, clip_dim, inner_dim = 4, 32, 16, 32
    config: dict[str, Any] = dict(
        sample_size=8, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=num_layers, attention_head_dim=16, num_attention_heads=inner_dim // 16,
        joint_attention_dim=text_dim, caption_projection_dim=inner_dim, pooled_projection_dim=2 * clip_dim,
        pos_embed_max_size=16,
    )
    if variant == "3.5":
        config.update(qk_norm="rms_norm", dual_attention_layers=(0,))
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**config).eval()
    vae = tiny_image_vae(latent_channels, scaling_factor=1.5305, shift_factor=0.0609, seed=seed + 1)
    tokenizer = clip_word_tokenizer(model_max_length=16)
    tokenizer_2 = clip_word_tokenizer(model_max_length=16)
    text_encoder = tiny_clip_encoder(tokenizer, hidden_size=clip_dim, projection_dim=clip_dim, seed=seed + 2)
    text_encoder_2 = tiny_clip_encoder(tokenizer_2, hidden_size=clip_dim, projection_dim=clip_dim, seed=seed + 3)
    tokenizer_3 = word_tokenizer(model_max_length=16)
    text_encoder_3 = tiny_t5_encoder(len(tokenizer_3), d_model=text_dim, seed=seed + 4)
    if variant == "3.5":
        scheduler = FlowMatchEulerDiscreteScheduler(**DYNAMIC_SHIFTING)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
