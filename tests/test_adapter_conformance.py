"""The adapter conformance suite: every registered adapter, every tiny variant, unchanged.

A new model family is done when it passes this file without special cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.registry import adapter_for
from vidinterp.sites import SiteProcessor

from conftest import ADAPTER_CASES

PROMPT = "a red dog walking on green grass"
CONCEPTS = ["dog", "grass"]
STEPS = 3


def _pipe(family: str, kwargs: dict):
    return vidinterp.testing.tiny_pipeline(family, **kwargs)


def required_inputs(pipe, adapter) -> dict:
    """Inputs a pipeline needs beyond a prompt (image-to-video: a grey first frame)."""
    import inspect

    from PIL import Image

    _, height, width = adapter.default_geometry()
    needed = [name for name, parameter in inspect.signature(pipe.__call__).parameters.items()
              if parameter.default is inspect.Parameter.empty and name not in ("self", "args", "kwargs")]
    return {name: Image.new("RGB", (width, height), (128, 128, 128)) for name in needed if name == "image"}


def _generate(pipe, adapter, **extra):
    geometry = adapter.default_geometry()
    return pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **adapter.generation_kwargs(*geometry),
        **required_inputs(pipe, adapter),
        **extra,
    )


def _frames(output) -> np.ndarray:
    frames = output.frames[0] if hasattr(output, "frames") else output.images
    return np.round(np.clip(np.asarray(frames), 0, 1) * 255).astype(np.uint8)


def _processors(adapter):
    return [adapter.attention_module(spec).processor for spec in adapter.site_specs()]


def _valid_variant(check, start: int, step_limit: int = 64) -> int | None:
    """The nearest size other than ``start`` that ``check`` accepts (larger first), or None."""
    for delta in range(1, step_limit):
        for candidate in (start + delta, start - delta):
            try:
                check(candidate)
                return candidate
            except ValueError:
                continue
    return None


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_traced_generation_is_bit_identical(family, variant, kwargs):
    """Tracing with concepts and every hook point hooked leaves the generated video unchanged."""
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    reference = _frames(_generate(pipe, adapter))
    seen: list[str] = []

    def record(name):
        def hook(module, args, output):
            seen.append(name)
            assert torch.isfinite(output).all()
        return hook

    with vidinterp.hooked(pipe) as graph:
        graph_names = graph.hook_names()
    trace = vidinterp.trace(
        pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS, steps=range(STEPS),
        hooks={name: record(name) for name in graph_names}, pipeline_kwargs=required_inputs(pipe, adapter),
        **dict(zip(("num_frames", "height", "width"), adapter.default_geometry())),
    )
    assert np.array_equal(trace.video, reference)
    assert set(seen) == set(graph_names), "every hook point must fire"


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_processors_restored_after_error(family, variant, kwargs):
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    originals = _processors(adapter)
    reference = _frames(_generate(pipe, adapter))
    first_site = adapter.site_specs()[0].name

    def explode(module, args, output):
        raise RuntimeError("boom from a hook")

    with pytest.raises(RuntimeError, match="boom from a hook"):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS,
                        hooks={f"{first_site}.hook_q": explode}, pipeline_kwargs=required_inputs(pipe, adapter))

    def interrupt(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS, on_step=interrupt,
                        pipeline_kwargs=required_inputs(pipe, adapter))

    assert all(now is before for now, before in zip(_processors(adapter), originals))
    assert not any(isinstance(p, SiteProcessor) for p in _processors(adapter))
    assert not adapter.transformer._forward_pre_hooks and not adapter.transformer._forward_hooks
    assert np.array_equal(_frames(_generate(pipe, adapter)), reference)


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_geometry_derived_from_config_and_inputs(family, variant, kwargs):
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    check = adapter.check_geometry
    other_frames = _valid_variant(lambda f: check(f, height, width), frames)
    other_width = _valid_variant(lambda w: check(frames, height, w), width)
    geometries = [(frames, height, width)]
    geometries += [(other_frames, height, width)] if other_frames else []
    geometries += [(frames, height, other_width)] if other_width else []
    assert len(geometries) > 1, "an adapter must accept more than its native geometry"
    for geometry in geometries:
        layout = adapter.layout_for(*geometry)
        trace = vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=2, steps=[1],
                                num_frames=geometry[0], height=geometry[1], width=geometry[2],
                                pipeline_kwargs=required_inputs(pipe, adapter))
        maps = trace.maps
        assert dict(maps.sizes) == {"concept": 2, "frame": layout.frames, "y": layout.height, "x": layout.width}
        assert trace.video.shape[1:3] == geometry[1:]


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_hook_tensors_follow_documented_layout(family, variant, kwargs):
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    geometry = adapter.default_geometry()
    sites = vidinterp.list_sites(pipe, *geometry, concepts=len(CONCEPTS))
    shapes: dict[str, tuple] = {}
    with vidinterp.hooked(pipe, concepts=CONCEPTS, prompt=PROMPT) as graph:
        def record(name):
            def hook(module, args, output):
                shapes.setdefault(name, tuple(output.shape))
            return hook

        for name in graph.hook_names():
            graph.module(name).register_forward_hook(record(name))
        _generate(pipe, adapter, guidance_scale=1.0)
    assert set(shapes) == set(sites.hook.values)
    for name, shape in shapes.items():
        expected = tuple(int(v) for v in sites["shape"].sel(hook=name).values)
        assert shape == expected, f"{name}: {shape} != documented {expected}"


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_every_default_analysis_runs_in_renoise_mode(family, variant, kwargs):
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    trace = vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=4)
    assert trace.attrs["mode"] == "renoise"
    for name, variable in trace.maps.data_vars.items():
        assert variable.dims == ("concept", "frame", "y", "x"), name
        assert np.isfinite(variable.values).all(), name
        assert list(variable.concept.values) == CONCEPTS
    assert trace.maps.data_vars


@pytest.mark.parametrize("family, variant, kwargs", ADAPTER_CASES)
def test_sites_have_stable_names(family, variant, kwargs):
    pipe = _pipe(family, kwargs)
    adapter = adapter_for(pipe)
    specs = adapter.site_specs()
    assert specs, "an adapter must expose at least one site"
    for spec in specs:
        assert spec.name in (f"blocks.{spec.layer}.attn", f"blocks.{spec.layer}.cross_attn")
        assert adapter.attention_module(spec) is not None
    with vidinterp.hooked(pipe) as graph:
        for name in graph.hook_names():
            assert dict(adapter.transformer.named_modules())[graph.path(name)] is graph.module(name)
