"""Offline tiny random-weight pipelines and their shared parts (tokenizers, text encoders).

``tiny_pipeline("cogvideox")`` builds a complete pipeline (transformer, VAE, text encoder,
tokenizer, scheduler) from the real diffusers / transformers classes with tiny configs and
random weights, in well under a second, without touching the network. Each adapter ships its
own builder (``Adapter.tiny_pipeline``); this module holds the shared parts.
"""

from __future__ import annotations

from typing import Any

import torch

from vidinterp.registry import adapter_class

__all__ = ["tiny_pipeline", "word_tokenizer", "tiny_t5_encoder", "random_visit", "TINY_VOCABULARY"]

#: Words the tiny tokenizers know as whole tokens. Words outside it split into pieces
#: (``walking`` -> ``walk`` ``##ing``), which tests use for multi-token concepts.
TINY_VOCABULARY = (
    "a an the and of on in with is are at to from by over under near "
    "dog cat cow horse bird fish car boat ball person man woman child tree grass sky road "
    "water sand snow field street room table wall sun cloud shape circle square triangle diamond "
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


def random_visit(
    *,
    batch: int = 1,
    heads: int = 3,
    head_dim: int = 8,
    frames: int = 3,
    height: int = 4,
    width: int = 5,
    prompt_tokens: int = 6,
    concepts: int = 2,
    step: int = 0,
    layer: int = 0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    conditional_rows: slice | None = None,
):
    """A :class:`~vidinterp.sites.SiteVisit` of a joint-attention site filled with random
    tensors (prompt tokens first, then ``frames*height*width`` visual tokens), for testing
    analyses without a model. ``conditional_rows`` (default: every row) are the rows of the
    conditional CFG branch; the concept tensors hold those rows only, as a traced site's do."""
    from vidinterp.layout import TokenLayout
    from vidinterp.sites import SiteSpec, SiteVisit

    generator = torch.Generator().manual_seed(seed)
    visual = frames * height * width
    tokens = prompt_tokens + visual
    layout = TokenLayout(
        frames=frames, height=height, width=width, visual=slice(prompt_tokens, tokens),
        prompt=slice(0, prompt_tokens), concepts=concepts, batch=batch,
        conditional_rows=slice(0, batch) if conditional_rows is None else conditional_rows,
        frame_spans=tuple((f, f) for f in range(frames)), pixels_per_token=(8, 8),
    )
    joint = {name: torch.randn(batch, heads, tokens, head_dim, generator=generator).to(dtype) for name in "qkvz"}
    conditional = len(range(batch)[layout.conditional_rows])
    concept = {name: torch.randn(conditional, heads, concepts, head_dim, generator=generator).to(dtype) for name in "qkvz"}
    parts = {"visual": layout.visual, "prompt": layout.prompt}
    spec = SiteSpec(name=f"blocks.{layer}.attn", layer=layer, module_path=f"blocks.{layer}", heads=heads,
                    head_dim=head_dim, kind="joint", concept_stream=True)
    return SiteVisit(site=spec, step=step, timestep=float(1000 - step), layout=layout, tensors=joint,
                     parts={name: parts for name in "qkvz"}, concept_tensors=concept)
