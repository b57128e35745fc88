"""Offline tiny random-weight pipelines and their shared parts (tokenizers, text encoders, VAE).

``tiny_pipeline("cogvideox")`` builds a complete pipeline (transformer, VAE, text encoder,
tokenizer, scheduler) from the real diffusers / transformers classes with tiny configs and
random weights, in well under a second, without touching the network. Family builders live in
``vidinterp.testing.tiny_<family>`` and register themselves, with their named variants, with
:func:`register_tiny` (a builder for a family defined outside vidinterp registers the same way);
:func:`tiny_families`, :func:`tiny_variants` and :func:`tiny_pipeline` read the registry. This
module also holds the parts the builders share.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

from vidinterp.testing.builders import import_builtin_builders

__all__ = ["register_tiny", "tiny_families", "tiny_variants", "tiny_pipeline", "word_tokenizer", "tiny_t5_encoder",
           "clip_word_tokenizer", "tiny_clip_encoder", "tiny_image_vae", "random_visit", "TINY_VOCABULARY"]

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
#: FLUX.1-dev's ``FlowMatchEulerDiscreteScheduler`` config: a shift that depends on the image's
#: token count (the pipeline's ``mu``); the tiny Flux "dev" and SD3 "3.5" pipelines use it.
DYNAMIC_SHIFTING: dict[str, Any] = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                        base_image_seq_len=256, max_image_seq_len=4096)
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


def clip_word_tokenizer(model_max_length: int = 16):
    """A CLIP-style fast tokenizer built in code: :func:`word_tokenizer`'s vocabulary, wrapped as
    ``<|startoftext|> ... <|endoftext|>`` and padded with ``<|endoftext|>`` as CLIP's tokenizer
    does."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(word_tokenizer().backend_tokenizer.to_str())
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    backend.add_special_tokens([bos, eos])
    special = [(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}", special_tokens=special
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=eos, unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_clip_encoder(tokenizer, hidden_size: int = 32, projection_dim: int | None = None, seed: int = 0):
    """A randomly initialised two-layer CLIP text encoder for ``tokenizer``
    (:func:`clip_word_tokenizer`): ``CLIPTextModel``, or ``CLIPTextModelWithProjection`` when
    ``projection_dim`` is given."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return model_class(config).eval()


def tiny_image_vae(latent_channels: int, scaling_factor: float, shift_factor: float, seed: int = 0):
    """A randomly initialised ``AutoencoderKL`` with 2x spatial compression and the given latent
    scaling and shift."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


# -------------------------------------------------------------------- the registry
_BUILDERS: dict[str, Callable[..., Any]] = {}
_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {}


def register_tiny(family: str, variants: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None) -> Callable:
    """Decorator registering ``builder(**variant) -> pipeline`` as the tiny builder of ``family``
    (a builder for a family defined outside vidinterp registers the same way).

    ``variants`` names the keyword sets the adapter conformance checks run the builder with, one
    per config family the adapter supports (e.g. rotary or not, image-to-video): ``{name: keyword
    arguments}``, or variant names ``("2b", "5b")`` for ``{"2b": {"variant": "2b"}, ...}``;
    default ``{"default": {}}``."""
    if variants is None:
        named: dict[str, dict[str, Any]] = {"default": {}}
    elif isinstance(variants, Mapping):
        named = {name: dict(kwargs) for name, kwargs in variants.items()}
    else:
        named = {name: {"variant": name} for name in variants}

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[family] = builder
        _VARIANTS[family] = named
        return builder

    return decorate


def _registered(family: str) -> None:
    import_builtin_builders("tiny_")
    if family not in _BUILDERS:
        raise ValueError(f"no tiny pipeline for family {family!r}; tiny families: {sorted(_BUILDERS)}")


def tiny_families() -> list[str]:
    """Families with a registered tiny builder."""
    import_builtin_builders("tiny_")
    return sorted(_BUILDERS)


def tiny_variants(family: str) -> dict[str, dict[str, Any]]:
    """The named variants of ``family``'s tiny builder, ``{name: keyword arguments}``."""
    _registered(family)
    return {name: dict(kwargs) for name, kwargs in _VARIANTS[family].items()}


def tiny_pipeline(family: str = "cogvideox", **overrides: Any):
    """A complete tiny diffusers pipeline of ``family`` (see :func:`tiny_families`), random
    weights, built offline. Keyword arguments go to the family's builder (e.g. ``variant="2b"``
    for CogVideoX)."""
    _registered(family)
    return _BUILDERS[family](**overrides)


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
    analysed_rows: slice | None = None,
):
    """A :class:`~vidinterp.sites.SiteVisit` of a joint-attention site filled with random
    tensors (prompt tokens first, then ``frames*height*width`` visual tokens), for testing
    analyses without a model. ``analysed_rows`` (default: every row) are the rows of the
    conditional CFG branch; the concept tensors hold those rows only, as a traced site's do."""
    from vidinterp.layout import TokenLayout
    from vidinterp.sites import SiteSpec, SiteVisit

    generator = torch.Generator().manual_seed(seed)
    visual = frames * height * width
    tokens = prompt_tokens + visual
    layout = TokenLayout(
        frames=frames, height=height, width=width, visual=slice(prompt_tokens, tokens),
        prompt=slice(0, prompt_tokens), batch=batch,
        analysed_rows=slice(0, batch) if analysed_rows is None else analysed_rows,
        frame_spans=tuple((f, f) for f in range(frames)), pixels_per_token=(8, 8),
    )
    joint = {name: torch.randn(batch, heads, tokens, head_dim, generator=generator).to(dtype) for name in "qkvz"}
    conditional = len(range(batch)[layout.analysed_rows])
    concept = {name: torch.randn(conditional, heads, concepts, head_dim, generator=generator).to(dtype) for name in "qkvz"}
    parts = {"visual": layout.visual, "prompt": layout.prompt}
    spec = SiteSpec(name=f"blocks.{layer}.attn", layer=layer, module_path=f"blocks.{layer}", heads=heads,
                    head_dim=head_dim, kind="joint", concept_stream=True)
    return SiteVisit(site=spec, step=step, timestep=float(1000 - step), layout=layout, tensors=joint,
                     parts={name: parts for name in "qkvz"}, concept_tensors=concept)
