"""A tiny Mochi pipeline: the real diffusers classes with tiny configs and random weights, built
offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.testing.tiny import register_tiny, tiny_t5_encoder, word_tokenizer

__all__ = ["tiny_mochi", "tiny_mochi_vae"]


def tiny_mochi_vae(seed: int = 0):
    """A randomly initialised ``AutoencoderKLMochi`` with Mochi's 12 latent channels (and their
    ``latents_mean`` / ``latents_std``), 6x temporal and 8x spatial compression (what the
    pipeline assumes), 32 channels (its group norms need 32 groups) and no attention."""
    from diffusers import AutoencoderKLMochi

    torch.manual_seed(seed)
    return AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4,
        layers_per_block=(1,) * 5, add_attention_block=(False,) * 5,
        latents_mean=tuple(0.1 * (i % 5) - 0.2 for i in range(12)), latents_std=tuple(0.5 + 0.1 * i for i in range(12)),
    ).eval()


@register_tiny("mochi")
def tiny_mochi(num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny ``MochiPipeline``: a visual stream of width 32 (2 heads of 16) and a prompt stream of
    width 16 (``pooled_projection_dim``: Mochi's streams differ in width), random rotary
    frequencies, native geometry 13 frames at 32x48 pixels (3 latent frames of 2x3 tokens),
    prompts in 256 slots (the pipeline's default; padding masked). The scheduler inverts its
    sigmas, as Mochi's does. ``overrides`` go to the transformer config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    text_dim = 32
    config: dict[str, Any] = dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
                                  pooled_projection_dim=16, in_channels=12, text_embed_dim=text_dim, time_embed_dim=32)
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(**config).eval()
    with torch.no_grad():  # Mochi's rotary frequencies are learned; zero (the init) would turn nothing
        transformer.pos_frequencies.normal_(0.0, 0.3)
    transformer.register_to_config(native_geometry=(13, 32, 48))
    tokenizer = word_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    pipe = MochiPipeline(scheduler=scheduler, vae=tiny_mochi_vae(seed + 1), tokenizer=tokenizer,
                         text_encoder=tiny_t5_encoder(len(tokenizer), text_dim, seed=seed + 2), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
