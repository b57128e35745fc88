"""Offline tiny pipelines for tests, notebooks and examples.

``tiny_pipeline("cogvideox")`` builds a complete pipeline (transformer, VAE, text encoder,
tokenizer, scheduler) from the real diffusers / transformers classes with tiny configs and
random weights, in well under a second, without touching the network. Each adapter ships its
own builder (``Adapter.tiny_pipeline``); this module holds the shared parts.
"""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.registry import adapter_class

__all__ = ["tiny_pipeline", "word_tokenizer", "tiny_t5_encoder", "TINY_VOCABULARY"]

#: Words the tiny tokenizers know as whole tokens. Words outside it split into pieces
#: (``walking`` -> ``walk`` ``##ing``), which tests use for multi-token concepts.
TINY_VOCABULARY = (
    "a an the and of on in with is are at to from by over under near "
    "dog cat cow horse bird fish car boat ball person man woman child tree grass sky road "
    "water sand snow field street room table wall sun cloud shape circle square triangle "
    "red green blue yellow white black orange purple brown gray pink "
    "walk run jump swim fly roll move moving left right up down still static fast slow "
    "walks runs jumps swims flies rolls moves sits stands "
    "small big large little tall short bright dark"
).split()
_PIECES = ("##ing", "##ed", "##s", "##er", "##ly", "##y")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def word_tokenizer(words: tuple[str, ...] | list[str] = TINY_VOCABULARY, model_max_length: int = 512):
    """A T5-style fast tokenizer built in code (``tokenizers`` WordPiece), no files, no network.

    Special tokens follow T5: ``<pad>`` = 0, ``</s>`` = 1 (appended to every sequence),
    ``<unk>`` = 2. Known words are single tokens; other words split into known words, suffix
    pieces and single letters, so every lower-case word encodes without ``<unk>``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = ["<pad>", "</s>", "<unk>"]
    for token in list(words) + list(_PIECES) + list(_LETTERS) + [f"##{c}" for c in _LETTERS]:
        if token not in vocabulary:
            vocabulary.append(token)
    model = models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="<unk>")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0):
    """A randomly initialised two-layer ``T5EncoderModel`` of width ``d_model``."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def tiny_pipeline(family: str = "cogvideox", **overrides: Any):
    """A complete tiny diffusers pipeline of ``family`` (see ``vidinterp.adapter_classes()``),
    random weights, built offline. Keyword arguments go to the adapter's builder (e.g.
    ``variant="2b"`` for CogVideoX)."""
    return adapter_class(family).tiny_pipeline(**overrides)
