"""Tiny CogVideoX pipelines (2B, 5B, 1.5, image-to-video): the real diffusers classes with tiny
configs and random weights, built offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.testing.tiny import register_tiny, tiny_t5_encoder, word_tokenizer

__all__ = ["tiny_cogvideox", "VARIANTS"]

#: The named variants the adapter conformance checks run, one per config family.
VARIANTS = ("2b", "5b", "1.5", "i2v")


@register_tiny("cogvideox", variants=VARIANTS)
def tiny_cogvideox(variant: str = "5b", num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny CogVideoX pipeline: ``variant`` is ``"2b"`` (sin-cos positions, no rotary),
    ``"5b"`` (rotary), ``"1.5"`` (rotary, temporal patch 2) or ``"i2v"`` (image-to-video,
    learned positions, 2x input channels). Native geometry 9 frames at 32x48 pixels
    (3 latent frames of 4x6 tokens; 1.5: 17 frames -> 5 latent frames, padded as the
    pipeline does)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny CogVideoX variant {variant!r}; expected one of {VARIANTS}")
    latent_channels, text_dim = 4, 32
    config: dict[str, Any] = dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=latent_channels, out_channels=latent_channels,
        time_embed_dim=16, text_embed_dim=text_dim, num_layers=num_layers, sample_width=12, sample_height=8,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16,
        use_rotary_positional_embeddings=variant != "2b",
    )
    if variant == "1.5":
        config.update(patch_size_t=2, sample_frames=17)
    if variant == "i2v":
        config.update(in_channels=2 * latent_channels, use_learned_positional_embeddings=True)
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(**config).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8), latent_channels=latent_channels,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    tokenizer = word_tokenizer()
    text_encoder = tiny_t5_encoder(len(tokenizer), d_model=text_dim, seed=seed + 2)
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    pipeline_class = CogVideoXImageToVideoPipeline if variant == "i2v" else CogVideoXPipeline
    return pipeline_class(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                          transformer=transformer, scheduler=scheduler)
