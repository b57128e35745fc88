"""The published transformer configurations of the supported families, and pipelines that hold a
transformer of that size as fake tensors (no memory, no weights, no download).

Each entry of :data:`REAL_MODELS` copies the ``transformer/config.json`` of a published
checkpoint (widths, heads, layers, text lengths), written down here from those files; nothing is
downloaded. :func:`real_pipeline` assembles a pipeline around such a transformer the way the tiny
builders (:mod:`vidinterp.testing.tiny`) do, with the real diffusers classes: the transformer has
the published configuration, the text encoders are two-layer stand-ins of the published
*output width* (so prompts and concepts reach the transformer at the right width and length), and
the VAE is a tiny stand-in that is never run (the pipeline's compression factors are set to the
published ones, since the adapters read them). It must be called under
``torch._subclasses.fake_tensor.FakeTensorMode``: every parameter is then a fake tensor, which has
a shape, dtype and device but no storage, so a 14B-parameter model builds in about a second::

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        pipe = real_pipeline("cogvideox-5b")           # 5.57B parameters, no memory
        pipe = real_pipeline("wan2.1-14b", layers=2)   # published width, 2 of its 40 blocks

``benchmarks/real_sizes.py`` traces one transformer forward of each at its native geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RealModel", "REAL_MODELS", "real_model", "real_pipeline", "parameter_count", "in_fake_mode"]


@dataclass(frozen=True)
class RealModel:
    """One published checkpoint.

    Attributes:
        name: short name (the key of :data:`REAL_MODELS`).
        family: adapter family (``vidinterp.testing.tiny_pipeline`` builds its pipeline).
        model_id: the checkpoint's repository id (also the transformer's ``_name_or_path``, so the
            model cards' reference layer lists apply).
        source: where the configuration is written down (repository and file).
        transformer: the transformer's ``config.json`` (diffusers keyword arguments).
        geometry: ``(frames, height, width)`` pixels of the native setting traced.
        geometry_source: where that setting is stated.
        text: text-encoder output widths and token lengths of the published pipeline
            (``t5``/``llama``/``clip``: hidden width; ``*_length``: tokens the pipeline encodes).
        vae: ``(temporal, spatial)`` compression of the published VAE.
        published_parameters: the parameter count as published (model name, card or paper;
            the names of the two small models round theirs differently, see their entries).
        tiny: keyword arguments of the family's tiny builder (its variant).
        layer_keys: config keys holding block counts, scaled by :func:`real_pipeline`'s ``layers``.
    """

    name: str
    family: str
    model_id: str
    source: str
    transformer: dict[str, Any]
    geometry: tuple[int, int, int]
    geometry_source: str
    text: dict[str, int]
    vae: tuple[int, int]
    published_parameters: float
    tiny: dict[str, Any] = field(default_factory=dict)
    layer_keys: tuple[str, ...] = ("num_layers",)


_COGVIDEOX_COMMON: dict[str, Any] = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0, flip_sin_to_cos=True,
    freq_shift=0, in_channels=16, out_channels=16, norm_elementwise_affine=True, norm_eps=1e-5, patch_size=2,
    spatial_interpolation_scale=1.875, temporal_compression_ratio=4, temporal_interpolation_scale=1.0,
    text_embed_dim=4096, time_embed_dim=512, timestep_activation_fn="silu", use_learned_positional_embeddings=False,
)

REAL_MODELS: dict[str, RealModel] = {model.name: model for model in (
    RealModel(
        name="cogvideox-2b", family="cogvideox", model_id="THUDM/CogVideoX-2b",
        # THUDM/CogVideoX-2b, transformer/config.json
        source="THUDM/CogVideoX-2b transformer/config.json",
        transformer=dict(_COGVIDEOX_COMMON, num_attention_heads=30, num_layers=30, max_text_seq_length=226,
                         sample_frames=49, sample_height=60, sample_width=90, use_rotary_positional_embeddings=False),
        geometry=(49, 480, 720), geometry_source="config sample_frames x (sample_height, sample_width) x 8",
        text=dict(t5=4096, t5_length=226), vae=(4, 8), tiny=dict(variant="2b"),
        published_parameters=2e9,  # the name's "2B"; this configuration has 1.69B
    ),
    RealModel(
        name="cogvideox-5b", family="cogvideox", model_id="THUDM/CogVideoX-5b",
        # THUDM/CogVideoX-5b, transformer/config.json
        source="THUDM/CogVideoX-5b transformer/config.json",
        transformer=dict(_COGVIDEOX_COMMON, num_attention_heads=48, num_layers=42, max_text_seq_length=226,
                         sample_frames=49, sample_height=60, sample_width=90, use_rotary_positional_embeddings=True),
        geometry=(49, 480, 720), geometry_source="config sample_frames x (sample_height, sample_width) x 8",
        text=dict(t5=4096, t5_length=226), vae=(4, 8), published_parameters=5.57e9, tiny=dict(variant="5b"),
    ),
    RealModel(
        name="cogvideox1.5-5b", family="cogvideox", model_id="THUDM/CogVideoX1.5-5B",
        # THUDM/CogVideoX1.5-5B, transformer/config.json (sample_height/width 300 is the rotary
        # grid bound, not the resolution; the model card states 81 frames at 1360x768)
        source="THUDM/CogVideoX1.5-5B transformer/config.json",
        transformer=dict(_COGVIDEOX_COMMON, num_attention_heads=48, num_layers=42, max_text_seq_length=224,
                         sample_frames=81, sample_height=300, sample_width=300, patch_size_t=2, patch_bias=False,
                         use_rotary_positional_embeddings=True),
        geometry=(81, 768, 1360), geometry_source="THUDM/CogVideoX1.5-5B README (1360x768, 81 frames)",
        text=dict(t5=4096, t5_length=224), vae=(4, 8), published_parameters=5.57e9, tiny=dict(variant="1.5"),
    ),
    RealModel(
        name="hunyuanvideo", family="hunyuan_video", model_id="hunyuanvideo-community/HunyuanVideo",
        # hunyuanvideo-community/HunyuanVideo, transformer/config.json; text length: the
        # pipeline's max_sequence_length default (256 Llama tokens after the template crop)
        source="hunyuanvideo-community/HunyuanVideo transformer/config.json",
        transformer=dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                         num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2,
                         patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
                         pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
        geometry=(129, 720, 1280), geometry_source="HunyuanVideo README: 720p (720x1280), 129 frames",
        text=dict(llama=4096, llama_length=256, clip=768, clip_length=77), vae=(4, 8), published_parameters=12.8e9,
        layer_keys=("num_layers", "num_single_layers"),
    ),
    RealModel(
        name="wan2.1-1.3b", family="wan", model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
        source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json",
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                         out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                         added_kv_proj_dim=None, rope_max_seq_len=1024),
        geometry=(81, 480, 832), geometry_source="WanPipeline.__call__ defaults (81 frames, 480x832)",
        text=dict(t5=4096, t5_length=512), vae=(4, 8), tiny=dict(variant="t2v"),
        published_parameters=1.3e9,  # the name's "1.3B"; this configuration has 1.42B
    ),
    RealModel(
        name="wan2.1-14b", family="wan", model_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        # Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json",
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                         out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                         added_kv_proj_dim=None, rope_max_seq_len=1024),
        geometry=(81, 480, 832), geometry_source="WanPipeline.__call__ defaults (81 frames, 480x832)",
        text=dict(t5=4096, t5_length=512), vae=(4, 8), published_parameters=14.0e9, tiny=dict(variant="t2v"),
    ),
    RealModel(
        name="flux.1-dev", family="flux", model_id="black-forest-labs/FLUX.1-dev",
        # black-forest-labs/FLUX.1-dev, transformer/config.json; text: 512 T5 tokens (pipeline default)
        source="black-forest-labs/FLUX.1-dev transformer/config.json",
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        geometry=(1, 1024, 1024), geometry_source="FluxPipeline default (default_sample_size 128 x VAE 8)",
        text=dict(t5=4096, t5_length=512, clip=768, clip_length=77), vae=(1, 8), published_parameters=11.9e9,
        tiny=dict(variant="dev"), layer_keys=("num_layers", "num_single_layers"),
    ),
    RealModel(
        name="sd3.5-large", family="sd3", model_id="stabilityai/stable-diffusion-3.5-large",
        # stabilityai/stable-diffusion-3.5-large, transformer/config.json; text: 77 CLIP + 256 T5
        # tokens (pipeline default max_sequence_length)
        source="stabilityai/stable-diffusion-3.5-large transformer/config.json",
        transformer=dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                         attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                         caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                         qk_norm="rms_norm", dual_attention_layers=()),
        geometry=(1, 1024, 1024), geometry_source="config sample_size 128 x VAE 8",
        text=dict(t5=4096, t5_length=256, clip=768, clip_2=1280, clip_length=77), vae=(1, 8),
        published_parameters=8.1e9, tiny=dict(variant="3.5"),
    ),
)}


def real_model(name: str) -> RealModel:
    """The :class:`RealModel` called ``name`` (one of :data:`REAL_MODELS`)."""
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown real model {name!r}; expected one of {sorted(REAL_MODELS)}") from None


def in_fake_mode() -> bool:
    """Whether a ``FakeTensorMode`` is active (factory functions then make fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any(isinstance(mode, FakeTensorMode) for mode in _get_current_dispatch_mode_stack())


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (fake or real)."""
    return sum(parameter.numel() for parameter in module.parameters())


def _scaled_config(model: RealModel, layers: int | None) -> dict[str, Any]:
    config = dict(model.transformer)
    if layers is not None:
        for key in model.layer_keys:
            config[key] = min(int(layers), int(config[key]))
    return config


def real_pipeline(name: str, *, layers: int | None = None, dtype: torch.dtype = torch.bfloat16):
    """A pipeline of the published model ``name`` whose transformer has the published
    configuration (``layers``: keep at most this many blocks of each kind, at the published
    width), as fake tensors of ``dtype``. Must run under ``FakeTensorMode`` (it would otherwise
    allocate the real model); the text encoders are two-layer stand-ins of the published output
    width and the tokenizers encode the published text lengths.

    Raises:
        RuntimeError: outside ``FakeTensorMode``.
    """
    if not in_fake_mode():
        raise RuntimeError("real_pipeline builds full-size models: call it under "
                           "torch._subclasses.fake_tensor.FakeTensorMode (fake tensors have no storage)")
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from vidinterp.testing.tiny import tiny_pipeline

    model = real_model(name)
    with unset_fake_temporarily():  # the tiny parts (tokenizers, scheduler, VAE) are real tensors
        pipe = tiny_pipeline(model.family, **model.tiny)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # fake parameters cannot be cast afterwards (module.to swaps tensors)
    try:
        transformer = type(pipe.transformer)(**_scaled_config(model, layers)).eval()
        transformer.register_to_config(_name_or_path=model.model_id)
        if "native_geometry" in pipe.transformer.config:  # tiny Wan / HunyuanVideo record their native geometry
            transformer.register_to_config(native_geometry=model.geometry)
        pipe.transformer = transformer
        _real_text_encoders(pipe, model)  # in ``dtype`` too, as a pipeline loaded with torch_dtype=dtype
    finally:
        torch.set_default_dtype(default)
    temporal, spatial = model.vae
    if model.family in ("flux", "sd3"):
        pipe.vae_scale_factor = spatial
        pipe.default_sample_size = model.geometry[1] // spatial
    else:
        pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = temporal, spatial
    return pipe


def _widened(encoder, **changes):
    """A fresh text encoder of ``encoder``'s class and configuration with ``changes`` applied."""
    config = type(encoder.config)(**{**encoder.config.to_dict(), **changes})
    return type(encoder)(config).eval()


def _real_text_encoders(pipe, model: RealModel) -> None:
    """Swap the tiny builder's text encoders for stand-ins of the published output widths
    (same classes, two layers), and set the tokenizers to the published text lengths."""
    text = model.text
    if model.family in ("cogvideox", "wan"):  # T5 / UMT5
        pipe.text_encoder = _widened(pipe.text_encoder, d_model=text["t5"], d_ff=2 * text["t5"])
    elif model.family == "hunyuan_video":  # Llama (hidden states) + CLIP (pooled)
        pipe.text_encoder = _widened(pipe.text_encoder, hidden_size=text["llama"], intermediate_size=2 * text["llama"])
        pipe.text_encoder_2 = _widened(pipe.text_encoder_2, hidden_size=text["clip"], intermediate_size=2 * text["clip"])
    elif model.family == "flux":  # CLIP (pooled) + T5
        pipe.tokenizer.model_max_length = pipe.tokenizer_max_length = text["clip_length"]
        pipe.tokenizer_2.model_max_length = text["t5_length"]
        pipe.text_encoder = _widened(pipe.text_encoder, hidden_size=text["clip"], intermediate_size=2 * text["clip"],
                                     max_position_embeddings=text["clip_length"])
        pipe.text_encoder_2 = _widened(pipe.text_encoder_2, d_model=text["t5"], d_ff=2 * text["t5"])
    elif model.family == "sd3":  # CLIP-L + CLIP-G (hidden states and pooled) + T5
        pipe.tokenizer.model_max_length = pipe.tokenizer_2.model_max_length = text["clip_length"]
        pipe.tokenizer_max_length = text["clip_length"]
        pipe.tokenizer_3.model_max_length = text["t5_length"]
        for attribute, width in (("text_encoder", text["clip"]), ("text_encoder_2", text["clip_2"])):
            setattr(pipe, attribute, _widened(getattr(pipe, attribute), hidden_size=width, intermediate_size=2 * width,
                                              projection_dim=width, max_position_embeddings=text["clip_length"]))
        pipe.text_encoder_3 = _widened(pipe.text_encoder_3, d_model=text["t5"], d_ff=2 * text["t5"])
    else:  # pragma: no cover - every REAL_MODELS family is handled above
        raise NotImplementedError(model.family)
