"""User inputs: pipelines (objects or local paths) and concept lists, validated with errors
that name what was expected (videos: :mod:`vidinterp.video`)."""

from __future__ import annotations

from os import PathLike
from typing import Any, Iterable

__all__ = ["load_pipeline", "validate_concepts"]


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
