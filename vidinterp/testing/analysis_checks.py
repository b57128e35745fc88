"""Conformance checks of analyses: labelled results, merging, memory, dtypes, declared inputs,
every family it reads, and the planted words' maps (see :mod:`vidinterp.testing.checks`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np
import torch

from vidinterp.testing.conformance import (
    CONCEPTS,
    MAP_DIMS,
    PROMPT,
    CheckNotApplicable,
    assert_localises,
    renoised,
    results_of,
    tiny_pipe,
)

def check_declares_requirements(analysis_cls) -> None:
    """``requires`` names (tensor, part) pairs of the site protocol and ``site_kinds`` known
    kinds; ``group`` is a Trace group."""
    from vidinterp.results import GROUPS
    from vidinterp.sites import TENSOR_NAMES, TOKEN_PARTS

    analysis = analysis_cls()
    assert analysis.requires, f"{analysis_cls.__name__}.requires is empty: declare the site tensors it reads"
    for entry in analysis.requires:
        assert len(entry) == 2 and entry[0] in TENSOR_NAMES and entry[1] in TOKEN_PARTS, (
            f"requires entry {entry!r}: expected (tensor in {TENSOR_NAMES}, part in {TOKEN_PARTS})")
    assert set(analysis.site_kinds) <= {"joint", "self", "cross"}, f"unknown site kinds {analysis.site_kinds}"
    assert analysis.group in GROUPS, f"group {analysis.group!r} is not one of {GROUPS}"


def check_result_is_well_formed(analysis_cls) -> None:
    """The result is a non-empty Dataset whose every dim has a coordinate; maps are finite and
    labelled with the concepts."""
    result = results_of(renoised(tiny_pipe(), analysis_cls()))
    assert result.data_vars, "the analysis returned no variables"
    for name, variable in result.data_vars.items():
        assert variable.size > 0, f"{name} is empty"
        for dim in variable.dims:
            assert dim in result.coords, f"{name}: dim {dim!r} has no coordinate"
        if variable.dims == MAP_DIMS:
            assert np.isfinite(variable.values).all(), f"{name} has non-finite values"
            assert list(variable.concept.values) == CONCEPTS, name


def check_streaming_runs_merge(analysis_cls) -> None:
    """Two generation traces analysing steps 2 and 3, merged, equal one trace analysing both."""
    import vidinterp
    from vidinterp.analysis import Analysis

    if analysis_cls.merge is Analysis.merge:
        raise CheckNotApplicable(f"{analysis_cls.__name__} does not support merging runs")
    pipe = tiny_pipe()
    whole, first, second = analysis_cls(), analysis_cls(), analysis_cls()

    def traced(analysis, steps):
        return vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis], num_inference_steps=4,
                               steps=steps)

    expected = results_of(traced(whole, [2, 3]))
    traced(first, [2])
    traced(second, [3])
    merged = first.merge(second).result()
    for name, variable in merged.data_vars.items():
        np.testing.assert_allclose(variable.values, expected[name].values, rtol=1e-5, atol=1e-6, err_msg=name)


def check_no_p_by_p_allocation(analysis_cls) -> None:
    """No tensor of ``P x P`` elements (or a quarter of it) is created while the analysis
    updates, at 1,152 visual tokens."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    import vidinterp

    class LargestTensor(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            output = func(*args, **(kwargs or {}))
            for item in tree_flatten(output)[0]:
                if isinstance(item, torch.Tensor):
                    self.largest = max(self.largest, item.numel())
            return output

    analysis = analysis_cls()
    probe = LargestTensor()
    observe = analysis.observe

    def observe_under_probe(visit):
        with probe:
            observe(visit)

    analysis.observe = observe_under_probe
    # 9 frames at 128x192 px: 3 latent frames of 16x24 tokens, P = 1152 visual tokens.
    vidinterp.trace(tiny_pipe(), prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis], num_inference_steps=2,
                    steps=[1], height=128, width=192)
    tokens = 1152 + 16
    assert probe.largest > 0, "the analysis computed nothing"
    assert probe.largest < tokens * tokens // 4, (
        f"the analysis allocated {probe.largest} elements (P x P = {tokens * tokens})")


def check_float32_results_with_bfloat16_model(analysis_cls) -> None:
    """Under a bfloat16 model, floating results are float32 or float64 and finite."""
    pipe = tiny_pipe()
    pipe.transformer.to(torch.bfloat16)
    for name, variable in results_of(renoised(pipe, analysis_cls())).data_vars.items():
        if np.issubdtype(variable.dtype, np.floating):
            assert variable.dtype in (np.float32, np.float64), f"{name} is {variable.dtype}"
            assert np.isfinite(variable.values).all() or name.startswith("separation"), f"{name} is not finite"


def _restricted(visit, requires: Iterable[tuple[str, str]]):
    """A copy of ``visit`` in which everything the analysis did not declare is NaN: token parts
    of undeclared (tensor, part) pairs, the unconditional rows, undeclared concept tensors."""
    declared = set(requires)
    rows = visit.layout.analysed_rows
    tensors = {}
    for name, tensor in visit.tensors.items():
        poisoned = torch.full_like(tensor, math.nan)
        if (name, "all") in declared:
            poisoned[rows] = tensor[rows]
        for part, token_slice in visit.parts.get(name, {}).items():
            if (name, part) in declared and token_slice is not None:
                poisoned[rows, :, token_slice] = tensor[rows, :, token_slice]
        tensors[name] = poisoned
    concepts = {name: tensor if (name, "concept") in declared else torch.full_like(tensor, math.nan)
                for name, tensor in visit.concept_tensors.items()}
    return dataclasses.replace(visit, tensors=tensors, concept_tensors=concepts)


def check_reads_only_what_it_requires(analysis_cls) -> None:
    """The analysis gives the same result when every tensor part it does not declare in
    ``requires`` (and every unconditional CFG row) is NaN, on every family it reads."""
    for family in _families_read_by(analysis_cls):
        pipe = tiny_pipe(family)
        plain, restricted = analysis_cls(), analysis_cls()
        observe = restricted.observe
        restricted.observe = lambda visit, observe=observe: observe(_restricted(visit, restricted.requires))
        guidance = {"guidance_scale": 3.0} if family in ("cogvideox", "sd3") else {}
        expected = results_of(renoised(pipe, plain, **guidance))
        result = results_of(renoised(pipe, restricted, **guidance))
        for name, variable in expected.data_vars.items():
            try:
                np.testing.assert_allclose(result[name].values, variable.values, rtol=1e-5, atol=1e-6, equal_nan=True)
            except AssertionError:
                raise AssertionError(
                    f"on {family}, {name} changes when the tensor parts outside requires={list(restricted.requires)} "
                    f"and the unconditional rows are NaN: the analysis reads something it does not declare"
                ) from None


def _families_read_by(analysis_cls) -> list[str]:
    """Registered families with a site kind the analysis reads and enough frames for it."""
    from vidinterp.registry import adapter_class, adapter_classes

    families = []
    for family in sorted(adapter_classes()):
        pipe = tiny_pipe(family)
        adapter = adapter_class(family)(pipe)
        kinds = {spec.kind for spec in adapter.site_specs()}
        frames = adapter.layout_for(*adapter.default_geometry()).frames
        if kinds & set(analysis_cls.site_kinds) and analysis_cls.min_frames <= frames:
            families.append(family)
    return families


def check_runs_on_every_family_it_reads(analysis_cls) -> None:
    """On every registered family whose site kinds the analysis reads, a renoise trace gives a
    non-empty result (not only on CogVideoX)."""
    families = _families_read_by(analysis_cls)
    assert families, f"no registered family has the site kinds {analysis_cls.site_kinds} the analysis reads"
    for family in families:
        result = results_of(renoised(tiny_pipe(family), analysis_cls()))
        assert result.data_vars, f"on {family} the analysis returned no variables"


def check_planted_localisation(analysis_cls, family: str) -> None:
    """On the planted model of ``family``, the analysis' ``(concept, frame, y, x)`` maps point
    into each planted word's token mask in every frame with IoU >= 0.9."""
    from vidinterp.testing.planted import map_scores, planted_pipeline, planted_token_masks, planted_trace

    pipe = planted_pipeline(family)
    trace, clip = planted_trace(pipe, analyses=[analysis_cls()])
    maps = {name: variable for name, variable in trace.maps.data_vars.items() if variable.dims == MAP_DIMS}
    assert maps, f"{analysis_cls.__name__} (group 'maps') made no (concept, frame, y, x) map"
    design = pipe.vidinterp_planted
    masks = planted_token_masks(clip, design)
    rows = {}
    for name, variable in maps.items():
        grid = tuple(variable.sizes[dim] for dim in ("frame", "y", "x"))
        expected = (design.token_frames, *design.token_grid)
        assert grid == expected, f"{name}: map grid {grid} != planted (frames, rows, columns) {expected}"
        for word in design.words:
            rows[(name, word)] = map_scores(variable.sel(concept=word).values, masks[word])
    assert_localises(rows, f"{family} maps")


ANALYSIS_CHECKS = (
    check_declares_requirements,
    check_result_is_well_formed,
    check_streaming_runs_merge,
    check_no_p_by_p_allocation,
    check_float32_results_with_bfloat16_model,
    check_reads_only_what_it_requires,
    check_runs_on_every_family_it_reads,
)
