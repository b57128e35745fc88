"""User inputs: pipelines (objects or local paths), concept lists and videos, validated with
errors that name what was expected."""

from __future__ import annotations

from os import PathLike
from typing import Any, Iterable

import numpy as np

from vidinterp.adapter import Adapter
from vidinterp.video import as_frames, resample_video

__all__ = ["load_pipeline", "validate_concepts", "prepare_video"]


def load_pipeline(model: Any):
    """A diffusers pipeline: ``model`` itself, or ``DiffusionPipeline.from_pretrained(model)``
    from a local path or a model id already in the local cache (never downloads)."""
    if not isinstance(model, (str, PathLike)):
        return model
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load pipeline {str(model)!r} from local files ({error}); vidinterp never "
            f"downloads weights: pass a local directory or a model id present in the cache"
        ) from error


def validate_concepts(concepts: Iterable[str]) -> list[str]:
    """Concept names as a list: non-empty strings, no duplicates."""
    if isinstance(concepts, str):
        concepts = [concepts]
    names = list(concepts)
    if not names:
        raise ValueError("concepts must name at least one concept, e.g. concepts=['dog', 'walking']; got none")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"every concept must be a non-empty string, got {name!r} in {names}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"concepts must be distinct; {duplicates} appear more than once in {names}")
    return [name.strip() for name in names]



def prepare_video(adapter: Adapter, video, num_frames: int | None, height: int | None, width: int | None,
                  resample: bool) -> np.ndarray:
    """Decode ``video`` to ``uint8`` ``[F, H, W, 3]``, resample it to the requested geometry when
    ``resample`` (else require it to match) and check the geometry against the model."""
    frames = as_frames(video)
    given = (frames.shape[0], frames.shape[1], frames.shape[2])
    target = (num_frames or given[0], height or given[1], width or given[2])
    if target != given:
        if not resample:
            raise ValueError(
                f"video has {given[0]} frames at {given[1]}x{given[2]}, but {target[0]} frames at "
                f"{target[1]}x{target[2]} were asked for; pass resample=True to resample it"
            )
        frames = resample_video(frames, *target)
    try:
        adapter.check_geometry(*target)
    except ValueError as error:
        hint = "" if resample else "; pass num_frames/height/width with resample=True to resample"
        raise ValueError(f"{error}{hint}") from None
    return frames
