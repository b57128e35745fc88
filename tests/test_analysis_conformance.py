"""The analysis conformance suite: every registered analysis, unchanged.

A new method is done when it passes this file: a well-formed Dataset with coordinates, runs
split over two traces merge to one, no ``P x P`` tensor in its default path, and float32
results when the model runs in bfloat16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vidinterp
import vidinterp.testing

ANALYSES = sorted(vidinterp.analysis_classes().items())
PROMPT, CONCEPTS = "a dog walking on grass", ["dog", "grass"]


@pytest.fixture(scope="module")
def pipe():
    return vidinterp.testing.tiny_pipeline("cogvideox")


def traced(pipe, analysis, **options):
    options = {"num_inference_steps": 4, **options}
    return vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis], **options)


def results_of(trace: vidinterp.Trace) -> xr.Dataset:
    return xr.merge([trace.maps, trace.heads, trace.layers, trace.diagnostics], compat="override")


@pytest.mark.parametrize("name, cls", ANALYSES)
def test_result_is_a_well_formed_dataset(pipe, name, cls):
    result = results_of(traced(pipe, cls()))
    assert result.data_vars, f"{name} returned no variables"
    for variable_name, variable in result.data_vars.items():
        assert variable.size > 0
        for dim in variable.dims:
            assert dim in result.coords, f"{variable_name}: dim {dim!r} has no coordinate"
        if variable.dims == ("concept", "frame", "y", "x"):
            assert np.isfinite(variable.values).all()
            assert list(variable.concept.values) == CONCEPTS


@pytest.mark.parametrize("name, cls", ANALYSES)
def test_streaming_two_runs_merge_to_one(pipe, name, cls):
    if cls.merge is vidinterp.Analysis.merge:
        pytest.skip(f"{name} does not support merging runs")
    whole, first, second = cls(), cls(), cls()
    expected = results_of(traced(pipe, whole, steps=[2, 3]))
    traced(pipe, first, steps=[2])
    traced(pipe, second, steps=[3])
    merged = first.merge(second).result()
    for variable_name, variable in merged.data_vars.items():
        np.testing.assert_allclose(variable.values, expected[variable_name].values, rtol=1e-5, atol=1e-6,
                                   err_msg=variable_name)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for item in tree_flatten(output)[0]:
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return output


@pytest.mark.parametrize("name, cls", ANALYSES)
def test_no_p_by_p_allocation_in_default_path(pipe, name, cls):
    analysis = cls()
    probe = LargestTensor()
    observe = analysis.observe

    def observe_under_probe(visit):
        with probe:
            observe(visit)

    analysis.observe = observe_under_probe
    # 9 frames at 128x192 px: 3 latent frames of 16x24 tokens, P = 1152 visual tokens.
    traced(pipe, analysis, num_inference_steps=2, steps=[1], height=128, width=192)
    tokens = 1152 + 16
    assert probe.largest > 0
    assert probe.largest < tokens * tokens // 4, f"{name} allocated {probe.largest} elements (P x P = {tokens * tokens})"


@pytest.mark.parametrize("name, cls", ANALYSES)
def test_float32_results_with_bfloat16_model(name, cls):
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    pipe.transformer.to(torch.bfloat16)
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    trace = vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, analyses=[cls()], num_inference_steps=4)
    for variable_name, variable in results_of(trace).data_vars.items():
        if np.issubdtype(variable.dtype, np.floating):
            assert variable.dtype in (np.float32, np.float64), f"{variable_name} is {variable.dtype}"
            assert np.isfinite(variable.values).all() or variable_name.startswith("separation"), variable_name
