"""Tiny Flux pipelines (FLUX.1 dev / schnell): the real diffusers classes with tiny configs and
random weights, built offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.testing.tiny import (DYNAMIC_SHIFTING, clip_word_tokenizer, register_tiny, tiny_clip_encoder,
                                    tiny_image_vae, tiny_t5_encoder, word_tokenizer)

__all__ = ["tiny_flux", "VARIANTS"]

#: The named variants the adapter conformance checks run, one per config family.
VARIANTS = ("dev", "schnell")


@register_tiny("flux", variants=VARIANTS)
def tiny_flux(variant: str = "dev", num_layers: int = 2, num_single_layers: int = 2, seed: int = 0,
              **overrides: Any):
    """Tiny ``FluxPipeline``: ``variant`` ``"dev"`` (guidance embeddings, dynamic shifting)
    or ``"schnell"`` (neither). Native geometry 1 frame at 16x16 pixels (2x VAE, 2x2
    packing: 4x4 tokens), prompts of 16 T5 tokens; ``overrides`` go to the transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny Flux variant {variant!r}; expected one of {VARIANTS}")
    latent_channels, text_dim, clip_dim = 4, 32, 32
    config: dict[str, Any] = dict(
        patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=text_dim, pooled_projection_dim=clip_dim,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6),
    )
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**config).eval()
    vae = tiny_image_vae(latent_channels, scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 1)
    tokenizer = clip_word_tokenizer(model_max_length=16)
    text_encoder = tiny_clip_encoder(tokenizer, hidden_size=clip_dim, seed=seed + 2)
    tokenizer_2 = word_tokenizer(model_max_length=16)
    text_encoder_2 = tiny_t5_encoder(len(tokenizer_2), d_model=text_dim, seed=seed + 3)
    if variant == "dev":
        scheduler = FlowMatchEulerDiscreteScheduler(**DYNAMIC_SHIFTING)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.default_sample_size = 8  # native 8x8 latents (the real models: 128 -> 1024 px)
    pipe.set_progress_bar_config(disable=True)
    return pipe
