"""User inputs: pipelines (objects or local paths) and concept lists, validated with errors
that name what was expected (videos: :mod:`vidinterp.video`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

__all__ = ["load_pipeline", "validate_concepts"]


def load_pipeline(model: Any):
    """A diffusers pipeline: ``model`` itself, or ``DiffusionPipeline.from_pretrained(model)``
    from a local path or a model id already in the local cache (never downloads).

    Raises ``TypeError`` for anything else that has no ``transformer`` component (a number,
    ``None``, a bare transformer instead of its pipeline), naming what was given and the
    supported families; a pipeline of an unsupported family is refused by
    :func:`vidinterp.adapter_for`, which lists the families and their transformer classes."""
    if isinstance(model, (str, PathLike)):
        if not str(model).strip():
            raise ValueError(f"model must be a diffusers pipeline or a local path / cached model id, got {model!r}")
        return _from_pretrained(model)
    if getattr(model, "transformer", None) is None:
        from vidinterp.registry import adapter_classes

        adapters = adapter_classes()
        families = sorted(adapters)
        if any(cls.supports(model) for cls in adapters.values()):
            raise TypeError(
                f"model is a {type(model).__name__}, a transformer, not a pipeline: pass the diffusers pipeline that "
                f"holds it (its `transformer` component), e.g. the pipeline loaded with from_pretrained; supported "
                f"families: {families}"
            )
        shown = repr(model) if len(repr(model)) <= 60 else repr(model)[:57] + "..."
        raise TypeError(
            f"model must be a diffusers pipeline (or a local path / cached model id) of one of the families "
            f"{families}; got {type(model).__name__} {shown}, which has no `transformer` component"
        )
    return model


def _from_pretrained(model: str | PathLike):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load pipeline {str(model)!r} from local files ({error}); vidinterp never "
            f"downloads weights: pass a local directory or a model id present in the cache"
        ) from error


def validate_concepts(concepts: Iterable[str]) -> list[str]:
    """Concept names as a list: strings (one string is one concept), stripped of surrounding
    whitespace, non-empty and distinct after stripping.

    Raises ``TypeError`` for ``None``, a non-iterable or a non-string concept, ``ValueError``
    for no concepts, an empty (or whitespace-only) concept and repeats (``"dog"`` and ``" dog"``
    are one concept)."""
    example = "e.g. concepts=['dog', 'walking']"
    if isinstance(concepts, str):
        concepts = [concepts]
    if isinstance(concepts, (bytes, Mapping)) or not isinstance(concepts, Iterable):
        raise TypeError(f"concepts must be a list of words, {example}; got {concepts!r} ({type(concepts).__name__})")
    names = list(concepts)
    if not names:
        raise ValueError(f"concepts must name at least one concept, {example}; got none")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"concepts must be strings, got {name!r} ({type(name).__name__}) in {names}")
        if not name.strip():
            raise ValueError(f"concepts must be non-empty strings, got {name!r} in {names}")
    stripped = [name.strip() for name in names]
    duplicates = sorted({name for name in stripped if stripped.count(name) > 1})
    if duplicates:
        note = "" if stripped == names else " (after stripping surrounding whitespace)"
        raise ValueError(f"concepts must be distinct; {duplicates} appear more than once in {names}{note}")
    return stripped
