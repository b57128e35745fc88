"""Tiny Wan2.1 pipelines (text-to-video and image-to-video): the real diffusers classes with tiny
configs and random weights, built offline (see :mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

import types
from typing import Any

import torch

from vidinterp.testing.tiny import register_tiny, word_tokenizer

__all__ = ["tiny_wan", "VARIANTS"]

#: The named variants the adapter conformance checks run, one per config family.
VARIANTS = ("t2v", "i2v")


@register_tiny("wan", variants=VARIANTS)
def tiny_wan(variant: str = "t2v", num_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny Wan2.1 pipeline: ``variant`` ``"t2v"`` (``WanPipeline``) or ``"i2v"``
    (``WanImageToVideoPipeline``: CLIP image context in ``attn2``, mask + image latents as
    extra input channels). Native geometry 9 frames at 32x48 pixels (3 latent frames of
    2x3 tokens); prompts are encoded to 512 tokens (the pipelines' default, and the text
    length the stock I2V processor assumes). ``overrides`` go to the transformer config."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny Wan variant {variant!r}; expected one of {VARIANTS}")
    latent_channels, text_dim, heads, head_dim = 4, 32, 2, 16
    temporal_compression = 4
    config: dict[str, Any] = dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=latent_channels,
        out_channels=latent_channels, text_dim=text_dim, freq_dim=16, ffn_dim=32, num_layers=num_layers,
        rope_max_seq_len=32,
    )
    image_dim = 16
    if variant == "i2v":
        # noise latents + first-frame mask (one channel per temporally compressed frame) + image latents
        config.update(in_channels=2 * latent_channels + temporal_compression, image_dim=image_dim,
                      added_kv_proj_dim=heads * head_dim)
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**config).eval()
    transformer.register_to_config(native_geometry=(9, 32, 48))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=latent_channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.5, -0.3, 0.1, 0.2],
        latents_std=[2.0, 1.5, 0.7, 1.2],
    ).eval()
    tokenizer = word_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    components = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                      scheduler=scheduler)
    if variant == "t2v":
        return WanPipeline(**components)

    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    _patch_missing_ftfy()
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=image_dim, intermediate_size=2 * image_dim, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=16,
    )).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return WanImageToVideoPipeline(image_encoder=image_encoder, image_processor=image_processor, **components)


def _patch_missing_ftfy() -> None:
    """diffusers 0.42's ``pipeline_wan_i2v.basic_clean`` calls ``ftfy.fix_text`` even when ftfy
    is not installed (``pipeline_wan`` guards it). Without ftfy, give that module a stand-in
    whose ``fix_text`` is the identity, which is what ``pipeline_wan`` does in that case."""
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):
        pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
