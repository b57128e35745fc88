"""What the conformance checks share: inputs, constants, helpers, :class:`CheckNotApplicable`."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np
import torch
import xarray as xr

__all__ = ["CheckNotApplicable", "TinyBuilder", "tiny_builders", "PROMPT", "CONCEPTS", "MAP_DIMS", "MIN_IOU"]

PROMPT = "a red dog walking on green grass"
CONCEPTS = ["dog", "grass"]
STEPS = 3
MAP_DIMS = ("concept", "frame", "y", "x")
#: the planted checks' bar: every frame's map peaks in the mask, IoU at least this everywhere
MIN_IOU = 0.9


class CheckNotApplicable(Exception):
    """Raised by a check that does not apply to the class (the message says why)."""


#: A zero-argument callable that builds a tiny pipeline (one variant an adapter's checks run on).
TinyBuilder = Callable[[], Any]


def tiny_builders(adapter_cls, tiny: Mapping[str, TinyBuilder] | None = None) -> dict[str, TinyBuilder]:
    """The tiny pipelines the checks of ``adapter_cls`` run on, ``{variant name: zero-argument
    builder}``: ``tiny`` when given, else the variants registered for the adapter's family
    (:func:`vidinterp.testing.register_tiny`). Raises ``LookupError`` saying how to provide them
    when neither exists, and ``TypeError`` for a builder that is not callable."""
    from vidinterp.testing.tiny import tiny_families, tiny_pipeline, tiny_variants

    if tiny is not None:
        for name, build in tiny.items():
            if not callable(build):
                raise TypeError(f"tiny[{name!r}] must be a zero-argument callable that builds a pipeline, "
                                f"got {build!r}")
        return dict(tiny)
    family = getattr(adapter_cls, "family", None)
    if family not in tiny_families():
        raise LookupError(
            f"no tiny pipeline for {adapter_cls.__name__} (family {family!r}): register a builder of the family's "
            f"diffusers pipeline with tiny configs and random weights, `@vidinterp.testing.register_tiny({family!r}, "
            "variants={name: builder keyword arguments})`, or pass `tiny={variant name: zero-argument builder}` to "
            "adapter_checks / check_adapter"
        )
    return {name: partial(tiny_pipeline, family, **variant) for name, variant in tiny_variants(family).items()}


def adapter_of(adapter_cls, pipe):
    return adapter_cls(pipe)


def required_inputs(pipe, adapter) -> dict[str, Any]:
    """Inputs a pipeline needs beyond a prompt: a grey first frame for an image-to-video pipeline
    (one whose ``__call__`` takes ``image``; some, like LTX-Video's, default it to ``None`` although
    they cannot generate without one)."""
    from PIL import Image

    if "image" not in inspect.signature(pipe.__call__).parameters:
        return {}
    _, height, width = adapter.default_geometry()
    return {"image": Image.new("RGB", (width, height), (128, 128, 128))}


def video_of(output) -> np.ndarray:
    frames = output.frames[0] if hasattr(output, "frames") else output.images
    return np.round(np.clip(np.asarray(frames), 0, 1) * 255).astype(np.uint8)


def generate(pipe, adapter, steps: int = STEPS, **extra) -> Any:
    return pipe(prompt=PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np", **adapter.generation_kwargs(*adapter.default_geometry()),
                **required_inputs(pipe, adapter), **extra)


def processors_of(adapter) -> list[object]:
    return [adapter.attention_module(spec).processor for spec in adapter.site_specs()]


def nearest_valid(check: Callable[[int], None], start: int, limit: int = 64) -> int | None:
    """The nearest size other than ``start`` that ``check`` accepts (larger first), or None."""
    for delta in range(1, limit):
        for candidate in (start + delta, start - delta):
            try:
                check(candidate)
                return candidate
            except ValueError:
                continue
    return None


def results_of(trace) -> xr.Dataset:
    return xr.merge([trace.maps, trace.heads, trace.layers, trace.diagnostics], compat="override")


def traced(adapter_cls, pipe, **options):
    import vidinterp
    from vidinterp.registry import using_adapter

    with using_adapter(adapter_cls):
        return vidinterp.trace(pipe, **options)


def tiny_pipe(family: str = "cogvideox"):
    from vidinterp.testing import tiny_pipeline

    return tiny_pipeline(family)


def renoised(pipe, analysis, **options):
    import vidinterp

    from vidinterp.registry import adapter_for

    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis],
                           num_inference_steps=4, **options)


def assert_localises(rows: dict[tuple[str, str], tuple[float, float, float]], what: str) -> None:
    """Assert that every ``(method, word): (pointing, mean IoU, worst IoU)`` row points at the
    planted object in every frame with IoU >= :data:`MIN_IOU`."""
    assert rows, f"no {what} to score"
    failing = {key: tuple(round(v, 3) for v in value) for key, value in rows.items()
               if value[0] < 1.0 or value[2] < MIN_IOU}
    assert not failing, (f"{what} miss the planted objects (method, word): (pointing, mean IoU, worst IoU) = "
                         f"{failing}; expected pointing 1.0 and IoU >= {MIN_IOU} in every frame")
