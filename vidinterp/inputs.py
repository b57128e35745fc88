"""User inputs: pipelines (objects, local paths, or the command line's ``zoo:``/``tiny-`` names)
and concept lists, validated with errors that name what was expected (videos:
:mod:`vidinterp.video`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any, Literal

__all__ = ["load_pipeline", "load_model", "validate_concepts", "OFFLOAD_MODES", "DTYPES"]

OFFLOAD_MODES = ("none", "model", "sequential")
DTYPES = ("float32", "bfloat16", "float16")


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


def _from_pretrained(model: str | PathLike, **options: Any):
    """``DiffusionPipeline.from_pretrained(model, local_files_only=True, **options)``, with an
    ``OSError`` that says vidinterp never downloads."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(model), local_files_only=True, **options)
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load pipeline {str(model)!r} from local files ({error}); vidinterp never "
            f"downloads weights: pass a local directory or a model id present in the cache"
        ) from error


def load_model(spec: str, device: Any = "cpu", *, dtype: str | None = None, device_map: str | None = None,
               offload: Literal["none", "model", "sequential"] = "none"):
    """The pipeline ``spec`` names, placed on ``device`` (what ``vidinterp run`` and ``vidinterp
    eval`` load; each process of a sharded run loads it once, on its own device).

    ``spec`` is ``zoo:<name>`` (a trained model of ``vidinterp.zoo``), ``tiny-<family>`` (an
    offline tiny pipeline with random weights, :func:`vidinterp.testing.tiny_pipeline`) or a local
    pipeline folder / cached model id (``DiffusionPipeline.from_pretrained``, never downloading).

    Large models (a local pipeline only):

    * ``dtype``: ``"bfloat16"``, ``"float16"`` or ``"float32"`` (``torch_dtype`` of the load);
    * ``device_map``: passed to ``from_pretrained(device_map=...)`` (e.g. ``"balanced"`` spreads
      the components over the visible accelerators); the pipeline is then not moved;
    * ``offload``: ``"model"`` runs ``pipe.enable_model_cpu_offload(device=device)`` (each
      component moves to the device while it runs), ``"sequential"``
      ``enable_sequential_cpu_offload(device=device)`` (sub-module by sub-module: least memory,
      slowest).

    Tracing works with all of them: it computes on :attr:`vidinterp.adapter.Adapter.device`, the
    transformer's execution device when offloading hooks hold its weights elsewhere
    (``tests/test_gpu_readiness.py`` checks CPU offload, group offloading and device maps against
    the plain run). Without any of them the pipeline is moved to ``device``.

    Raises:
        ValueError: an unknown ``offload``/``dtype``, or ``device_map``/``offload``/``dtype`` with
            a zoo or tiny model, or ``device_map`` together with ``offload``.
        OSError: a local pipeline that cannot be loaded.
    """
    import torch

    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device_map is not None and offload != "none":
        raise ValueError(f"give device_map ({device_map!r}) or offload ({offload!r}), not both")
    builtin = spec.startswith(("zoo:", "tiny-"))
    if builtin and (device_map is not None or offload != "none" or dtype is not None):
        raise ValueError(f"device_map, offload and dtype apply to local pipelines, not to {spec!r}")
    if spec.startswith("zoo:"):
        import vidinterp

        return vidinterp.zoo.load(spec.removeprefix("zoo:"), device=str(device))
    if spec.startswith("tiny-"):
        from vidinterp.testing import tiny_pipeline

        return tiny_pipeline(spec.removeprefix("tiny-")).to(device)
    options: dict[str, Any] = {}
    if dtype is not None:
        options["torch_dtype"] = getattr(torch, dtype)
    if device_map is not None:
        options["device_map"] = device_map
    pipe = _from_pretrained(spec, **options)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif device_map is None:
        pipe = pipe.to(device)
    return pipe


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
