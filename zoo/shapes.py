"""The bundled "shapes" text-to-video model: a small CogVideoX DiT for the synthetic shapes clips.

Components, all real diffusers / transformers classes inside :class:`ShapesPipeline`, a
``CogVideoXPipeline`` that only changes the default text length to the trained one:

* ``transformer``: ``CogVideoXTransformer3DModel`` (rotary positions, patch 4; 32x32-pixel
  frames -> 8x8 tokens per frame, one latent frame per pixel frame);
* ``vae``: :class:`~vidinterp.zoo.latent.ShapesLatentMapping`, a fixed documented pixel <-> latent
  map (RGB + occupancy, no compression);
* ``tokenizer``: :class:`ShapesTokenizer`, word-level, built in code from
  :data:`vidinterp.datasets.shapes.VOCABULARY`; an unknown word is a ``ValueError`` that lists
  the vocabulary;
* ``text_encoder``: a ``T5EncoderModel``, trained jointly. With no layers (``text_layers = 0``,
  the default) it is one learned embedding per word and T5's final RMS norm, so a concept word
  encoded alone gets exactly the embedding it has inside a prompt. CogVideoX gives text tokens
  no position (rotary covers video tokens only), so such a model sees a caption as a bag of
  words: it cannot tell "a red circle and a blue square" from "a blue circle and a red square".
  Only T5 layers (relative positions) can bind a word to its object (``text_layers >= 1``; a new
  layer can be grown onto a trained layer-free model with :func:`warm_start`);
* ``scheduler``: ``CogVideoXDDIMScheduler`` (v-prediction, zero-terminal-SNR, trailing), the
  schedule the model is trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import CogVideoXPipeline

from vidinterp.datasets.shapes import CLASSIC_SHAPES, COLORS, DIRECTIONS, FUNCTION_WORDS, VOCABULARY, ShapesConfig
from vidinterp.zoo.latent import LATENT_CHANNELS, ShapesLatentMapping

__all__ = [
    "ShapesModelConfig",
    "ShapesPipeline",
    "ShapesTokenizer",
    "UnknownWordError",
    "build_shapes_pipeline",
    "shapes_tokenizer",
    "train_clip_config",
    "load_state",
    "export_state",
    "read_export",
    "warm_start",
    "clip_latents",
    "velocity_loss",
]

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def model_vocabulary(shapes: tuple[str, ...]) -> tuple[str, ...]:
    """Words of a shapes model trained on clips of ``shapes``: function words, colours, the
    shapes, directions (the tokenizer's id order)."""
    return FUNCTION_WORDS + tuple(COLORS) + tuple(shapes) + tuple(DIRECTIONS)


class UnknownWordError(ValueError):
    """A prompt or concept uses a word the shapes model does not know."""


@dataclass(frozen=True)
class ShapesModelConfig:
    """Architecture and clip geometry of the shapes model (stored next to the weights)."""

    num_frames: int = 6
    height: int = 32
    width: int = 32
    patch_size: int = 4
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 16
    time_embed_dim: int = 64
    text_dim: int = 64
    text_layers: int = 0
    text_heads: int = 4
    max_text_length: int = 12
    scaling_factor: float = 2.0
    object_size: tuple[int, int] = (8, 12)  # inclusive bounding-box size range of the clips, pixels
    shapes: tuple[str, ...] = CLASSIC_SHAPES  # object nouns of the clips
    single_object_spread: float = 0.25  # ShapesConfig.position_spread of one-object clips (1: anywhere)
    vocabulary: tuple[str, ...] | None = None  # None: model_vocabulary(shapes)

    def __post_init__(self) -> None:
        if self.vocabulary is None:
            object.__setattr__(self, "vocabulary", model_vocabulary(tuple(self.shapes)))
        missing = [shape for shape in self.shapes if shape not in self.vocabulary]
        if missing:
            raise ValueError(f"ShapesModelConfig.shapes {missing} are not in its vocabulary {list(self.vocabulary)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ShapesModelConfig":
        values = dict(values)
        for name in ("vocabulary", "object_size", "shapes"):
            if name in values:
                values[name] = tuple(values[name])
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ShapesModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def train_clip_config(model: ShapesModelConfig, num_objects: tuple[int, int] = (1, 2)) -> ShapesConfig:
    """The clip generator settings the model is trained and benchmarked on. One-object clips
    (``num_objects == (1, 1)``) start within ``model.single_object_spread`` of the centre, so
    their captions pin down the silhouette and the path; clips that may hold two objects start
    anywhere."""
    return ShapesConfig(
        num_frames=model.num_frames,
        height=model.height,
        width=model.width,
        num_objects=num_objects,
        motion_probability=0.7,
        partial_motion_probability=0.3,
        size_range=tuple(model.object_size),
        shapes=tuple(model.shapes),
        speed_range=(1.5, 3.0),
        min_visible_fraction=0.6,
        position_spread=model.single_object_spread if tuple(num_objects) == (1, 1) else 1.0,
    )


def _check_words(text: Any, vocabulary: tuple[str, ...]) -> None:
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if texts is None:
        return  # pre-tokenised input etc.: leave to the base class
    for item in texts:
        if not isinstance(item, str):
            continue
        unknown = sorted({word for word in item.lower().split() if word not in vocabulary})
        if unknown:
            raise UnknownWordError(
                f"the shapes model does not know the word(s) {unknown} in {item!r}; prompts and concepts "
                f"must use only its vocabulary: {list(vocabulary)}"
            )


def shapes_tokenizer(vocabulary: tuple[str, ...] = VOCABULARY, model_max_length: int = 512):
    """Word-level T5-style tokenizer built in code: ``<pad>`` = 0, ``</s>`` = 1 (appended),
    ``<unk>`` = 2, then one id per vocabulary word. Unknown words raise :class:`UnknownWordError`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    ids = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(vocabulary))}
    backend = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = ShapesTokenizer(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length,
    )
    tokenizer.shapes_vocabulary = tuple(vocabulary)
    return tokenizer


def _tokenizer_class():
    from transformers import PreTrainedTokenizerFast

    class _ShapesTokenizer(PreTrainedTokenizerFast):
        """Word-level tokenizer of the shapes model; unknown words are an error, not ``<unk>``."""

        shapes_vocabulary: tuple[str, ...] = VOCABULARY

        def __call__(self, text=None, *args, **kwargs):
            _check_words(text, self.shapes_vocabulary)
            return super().__call__(text, *args, **kwargs)

        def encode(self, text, *args, **kwargs):
            _check_words(text, self.shapes_vocabulary)
            return super().encode(text, *args, **kwargs)

    _ShapesTokenizer.__name__ = _ShapesTokenizer.__qualname__ = "ShapesTokenizer"
    return _ShapesTokenizer


ShapesTokenizer = _tokenizer_class()


class ShapesPipeline(CogVideoXPipeline):
    """``CogVideoXPipeline`` with one changed default, the text length.

    diffusers' ``CogVideoXPipeline.__call__`` pads prompts to 226 tokens; the shapes model is
    trained on ``shapes_config.max_text_length`` (12) and gives empty clips at 226. Calls that
    pass no ``max_sequence_length`` get the trained one; everything else is the parent's.
    """

    shapes_config: ShapesModelConfig  # set by build_shapes_pipeline

    def __call__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("max_sequence_length", self.shapes_config.max_text_length)
        return super().__call__(*args, **kwargs)


def build_shapes_pipeline(config: ShapesModelConfig | None = None, seed: int = 0):
    """A :class:`ShapesPipeline` with the shapes architecture and freshly initialised weights."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    config = config or ShapesModelConfig()
    tokenizer = shapes_tokenizer(config.vocabulary)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        time_embed_dim=config.time_embed_dim,
        text_embed_dim=config.text_dim,
        num_layers=config.num_layers,
        dropout=0.0,
        sample_width=config.width,
        sample_height=config.height,
        sample_frames=config.num_frames,
        patch_size=config.patch_size,
        temporal_compression_ratio=1,
        max_text_seq_length=config.max_text_length,
        use_rotary_positional_embeddings=True,
    ).eval()
    torch.manual_seed(seed + 1)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(SPECIAL_TOKENS) + len(config.vocabulary),
        d_model=config.text_dim,
        d_kv=config.text_dim // config.text_heads,
        d_ff=2 * config.text_dim,
        num_layers=config.text_layers,
        num_heads=config.text_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )).eval()
    vae = ShapesLatentMapping(scaling_factor=config.scaling_factor).eval()
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    pipe = ShapesPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                          transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.shapes_config = config  # architecture and clip geometry, for tools
    return pipe


def model_state(pipe) -> dict[str, torch.Tensor]:
    """The trainable weights of a shapes pipeline as one flat dict (``transformer.*``,
    ``text_encoder.*``)."""
    state = {f"transformer.{k}": v for k, v in pipe.transformer.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    return state


_TIED_TEXT_EMBEDDINGS = ("text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight")


def with_tied_embeddings(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with both names of T5's tied word embedding (``shared`` and
    ``encoder.embed_tokens``) when it holds either: saving may keep only one of them."""
    present = [key for key in _TIED_TEXT_EMBEDDINGS if key in state]
    if not present:
        return state
    return {**{key: state[present[0]] for key in _TIED_TEXT_EMBEDDINGS}, **state}


def load_state(pipe, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`model_state` dict into ``pipe`` (strict)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"transformer": {}, "text_encoder": {}}
    for key, value in with_tied_embeddings(state).items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ValueError(f"unexpected weight {key!r}; expected transformer.* or text_encoder.*")
        parts[prefix][rest] = value
    pipe.transformer.load_state_dict(parts["transformer"], strict=True)
    text = parts["text_encoder"]
    pipe.text_encoder.load_state_dict(text, strict=False)
    missing = set(pipe.text_encoder.state_dict()) - set(text)
    if missing:
        raise ValueError(f"text encoder weights missing: {sorted(missing)}")


def clip_latents(pipe, clips) -> torch.Tensor:
    """Scaled latents ``[B, F, C, H, W]`` of shapes clips (objects with ``frames``
    ``uint8 [F, H, W, 3]``), in the layout the pipeline's transformer takes."""
    pixels = torch.from_numpy(np.stack([clip.frames for clip in clips])).float() / 127.5 - 1  # [B, F, H, W, 3]
    latents = pipe.vae.latents(pixels.permute(0, 4, 1, 2, 3)) * pipe.vae.config.scaling_factor  # [B, C, F, H, W]
    return latents.permute(0, 2, 1, 3, 4).contiguous()


def velocity_loss(pipe, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  prompt_embeds: torch.Tensor, rotary, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training objective: mean squared error of the transformer's v-prediction for
    ``latents`` ``[B, F, C, H, W]`` noised with ``noise`` to ``timesteps`` ``[B]`` on the
    pipeline's schedule (float32 scalar; differentiable).

    ``weights`` (non-negative, broadcastable to ``latents``, e.g. ``[B, F, 1, H, W]``) makes it the
    weighted mean ``sum(w * err^2) / sum(w)`` (over the broadcast shape); ``None`` is plain MSE.
    """
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    target = pipe.scheduler.get_velocity(latents, noise, timesteps)
    prediction = pipe.transformer(hidden_states=noisy, encoder_hidden_states=prompt_embeds, timestep=timesteps,
                                  image_rotary_emb=rotary, return_dict=False)[0]
    if weights is None:
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
    squared = (prediction.float() - target.float()) ** 2
    weights = weights.float().expand_as(squared)
    return (weights * squared).sum() / weights.sum()


def warm_start(pipe, source: dict[str, torch.Tensor]) -> list[str]:
    """Load ``source`` weights into ``pipe``; text-encoder blocks the source lacks start as identity.

    A new T5 block is residual, so zeroing its attention output (``SelfAttention.o``) and
    feed-forward output (``DenseReluDense.wo``) projections makes the pipeline compute exactly what
    the source did; the block then learns to mix context (word order) into the word embeddings.
    Returns the names of the weights that were not in ``source``.
    """
    target = model_state(pipe)
    dropped = sorted(set(source) - set(target))
    if dropped:
        raise ValueError(f"warm start: the new model has no place for the source weights {dropped} "
                         f"(fewer layers than the source?)")
    new = sorted(set(target) - set(source))
    stray = [k for k in new if not k.startswith("text_encoder.encoder.block.")]
    if stray:
        raise ValueError(f"warm start: the source lacks weights other than new text-encoder blocks: {stray}")
    merged = {}
    for key, value in target.items():
        if key in source:
            if source[key].shape != value.shape:
                raise ValueError(f"warm start: {key} has shape {tuple(source[key].shape)} in the source, "
                                 f"expected {tuple(value.shape)}")
            merged[key] = source[key]
        elif key.endswith(("SelfAttention.o.weight", "DenseReluDense.wo.weight")):
            merged[key] = torch.zeros_like(value)
        else:
            merged[key] = value
    load_state(pipe, merged)
    return new


def read_export(path: str | Path) -> tuple[ShapesModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read what :func:`export_state` wrote: the config (the ``.json`` beside the weights, or the
    defaults when there is none), the weights as a :func:`model_state` dict (tied text embedding
    restored) and the file's metadata (e.g. ``step``, ``seed``)."""
    from safetensors import safe_open

    path = Path(path)
    config_file = path.with_suffix(".json")
    config = ShapesModelConfig.from_dict(json.loads(config_file.read_text())) if config_file.is_file() else ShapesModelConfig()
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata() or {})
    return config, with_tied_embeddings(state), metadata


def export_state(pipe, config: ShapesModelConfig, directory: str | Path, name: str = "shapes",
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``{name}.safetensors`` (float32 weights) and ``{name}.json`` (config) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().clone() for k, v in model_state(pipe).items()}
    state.pop("text_encoder.encoder.embed_tokens.weight", None)  # tied to shared.weight
    path = directory / f"{name}.safetensors"
    save_file(state, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    (directory / f"{name}.json").write_text(config.to_json())
    return path
