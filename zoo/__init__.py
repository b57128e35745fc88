"""Trained models that ship with vidinterp, loaded offline with one call.

``vidinterp.zoo.load("shapes")`` returns a ``CogVideoXPipeline`` trained on the synthetic
shapes clips (:mod:`vidinterp.datasets.shapes`), 6 frames at 32x32 pixels; see
:mod:`vidinterp.zoo.shapes` for the architecture and ``benchmarks/train_shapes.py`` for training.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from vidinterp.datasets.shapes import ManifestEntry, read_manifest
from vidinterp.zoo.shapes import (
    ShapesModelConfig,
    UnknownWordError,
    build_shapes_pipeline,
    load_state,
    read_export,
)

__all__ = [
    "load",
    "available",
    "weights_path",
    "demo_clip",
    "DEMO_SEED",
    "ShapesModelConfig",
    "UnknownWordError",
    "build_shapes_pipeline",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_DIR = Path(__file__).parent / "demo"
MODELS = ("shapes",)

#: Seed of the bundled demo clip: ``generate_clip(train_clip_config(ShapesModelConfig(), (2, 2)),
#: DEMO_SEED)``, disjoint from the training, validation and benchmark seeds.
DEMO_SEED = 40012


def weights_path(name: str = "shapes") -> Path:
    """Where the packaged weights of model ``name`` live (``.safetensors``; config ``.json`` beside)."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; available: {list(MODELS)}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def demo_clip(name: str = "shapes") -> ManifestEntry:
    """The clip bundled with zoo model ``name``: a two-object shapes clip the model never saw,
    as an mp4 (H.264, yuv444p, crf 0) with its exact masks, in a shapes manifest
    (:func:`vidinterp.datasets.shapes.write_dataset` of the clip of :data:`DEMO_SEED`).
    Load the frames and ground truth with :func:`vidinterp.datasets.shapes.load_clip`."""
    weights_path(name)  # validates the name
    return read_manifest(DEMO_DIR / name / "manifest.json")[0]


def available() -> list[str]:
    """Zoo models whose weights are installed."""
    return [name for name in MODELS if weights_path(name).is_file()]


def load(name: str = "shapes", *, weights: str | PathLike | None = None, device: str = "cpu"):
    """Load a zoo model as a diffusers pipeline, offline.

    Args:
        name: ``"shapes"``.
        weights: a ``.safetensors`` file to load instead of the packaged one (e.g. an export of a
            training run); its config is read from the ``.json`` beside it when present.
        device: torch device.

    Returns:
        A :class:`~vidinterp.zoo.shapes.ShapesPipeline` (a ``CogVideoXPipeline`` whose calls
        default to the trained text length: diffusers' default, 226 tokens, gives empty clips),
        e.g. ``pipe("a red circle moving left", num_frames=6, height=32, width=32)``. When a
        lambda2 layer-score file (``<name>.lambda2.json``, as
        :func:`vidinterp.analyses.lambda2.save_layer_scores` writes it) lies beside the weights,
        the pipeline carries it (and the file's ``threshold``, when given) as
        ``pipe.vidinterp_calibration``, so IMAP and ``Lambda2Layers`` select this model's layers
        without a calibration run.

    Raises:
        FileNotFoundError: when no weights are installed (train them with
            ``benchmarks/train_shapes.py`` and export, or pass ``weights=``).
    """
    path = Path(weights) if weights is not None else weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights for zoo model {name!r} at {path} (the package ships them in {WEIGHTS_DIR}). Train with "
            f"`python benchmarks/train_shapes.py` then export (`--export`), or pass weights=<file.safetensors>; "
            f"vidinterp.zoo.build_shapes_pipeline() gives an untrained instance"
        )
    config, state, _ = read_export(path)
    pipe = build_shapes_pipeline(config)
    load_state(pipe, state)
    layer_scores = path.with_suffix(".lambda2.json")
    if layer_scores.is_file():
        from vidinterp.calibration import load_calibration

        pipe.vidinterp_calibration = load_calibration(layer_scores)
    return pipe.to(device)
