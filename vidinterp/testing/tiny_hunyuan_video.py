"""Tiny HunyuanVideo pipelines (text-to-video): the real diffusers classes with tiny configs and
random weights, and a Llama-3-style tokenizer built in code, offline (see
:mod:`vidinterp.testing.tiny`)."""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch

from vidinterp.testing.tiny import TINY_VOCABULARY, register_tiny, word_tokenizer

__all__ = ["tiny_hunyuan_video", "tiny_llama_tokenizer"]

#: The Llama-3 pre-tokenisation pattern (used by the tiny offline tokenizer).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<unk>",
)
_SUFFIX_PIECES = ("##ing", "##ed", "##s", "##er", "##ly", "##y")


@register_tiny("hunyuan_video")
def tiny_hunyuan_video(num_layers: int = 2, num_single_layers: int = 2, seed: int = 0, **overrides: Any):
    """Tiny HunyuanVideo pipeline: 2 double- and 2 single-stream blocks of width 32, a causal
    VAE with 4x spatial and 4x temporal compression, a 3-layer Llama text encoder and a
    2-layer CLIP text encoder with tokenizers built in code. ``overrides`` go to the
    transformer config (e.g. ``patch_size_t=2``). Default geometry 9 frames at 32x48
    pixels (3 latent frames of 4x6 tokens; with ``patch_size_t=2``: 13 frames, 4 latent
    frames -> 2 token frames)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    latent_channels, text_dim, pooled_dim = 4, 32, 16
    config: dict[str, Any] = dict(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=16,
        num_layers=num_layers, num_single_layers=num_single_layers, num_refiner_layers=1, mlp_ratio=2.0,
        patch_size=2, patch_size_t=1, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim,
        rope_axes_dim=(4, 6, 6),
    )
    config.update(overrides)
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(**config).eval()
    latent_frames = 3 if config["patch_size_t"] == 1 else 2 * config["patch_size_t"]
    transformer.register_to_config(native_geometry=(4 * (latent_frames - 1) + 1, 32, 48))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=latent_channels, down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
        norm_num_groups=2, spatial_compression_ratio=4, temporal_compression_ratio=4,
    ).eval()
    tokenizer = tiny_llama_tokenizer(HunyuanVideoPipeline)
    torch.manual_seed(seed + 2)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).eval()
    tokenizer_2 = word_tokenizer(model_max_length=77)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=pooled_dim, intermediate_size=2 * pooled_dim,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=tokenizer_2.eos_token_id, eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )).eval()
    return HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def tiny_llama_tokenizer(pipeline_class):
    """A Llama-3-style fast tokenizer built in code: the Llama-3 pre-tokenisation regex and
    special tokens, and a WordPiece vocabulary holding every piece of the pipeline's default
    prompt template, so the template's prefix is exactly ``crop_start`` (95) tokens as with
    the real tokenizer. Known words are single tokens (also with a leading space); other words
    split into known words, suffix pieces and letters (``walking`` -> ``walk`` ``##ing``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    template = inspect.signature(pipeline_class.__call__).parameters["prompt_template"].default["template"]
    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
    separators = "|".join(re.escape(token) for token in (*_LLAMA3_SPECIAL_TOKENS, "{}"))
    template_pieces = [piece for text in re.split(separators, template.lower())
                       for piece, _ in split.pre_tokenize_str(text)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = list(_LLAMA3_SPECIAL_TOKENS)
    for token in (
        template_pieces
        + [form for word in TINY_VOCABULARY for form in (word, " " + word)]
        + list(_SUFFIX_PIECES) + list(letters) + [" " + c for c in letters] + ["##" + c for c in letters]
        + list("0123456789.,:;!?'\"-()") + [" ", "\n", "\n\n"]
    ):
        if token not in vocabulary:
            vocabulary.append(token)
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = split
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in _LLAMA3_SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>", unk_token="<unk>", model_max_length=1024,
    )
