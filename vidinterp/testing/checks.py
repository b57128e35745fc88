"""Conformance checks that every adapter and every analysis must pass, as scikit-learn's
``check_estimator`` does for estimators.

Each check is a named function; :func:`adapter_checks` / :func:`analysis_checks` list the checks
of a class (one per tiny variant or planted family where that applies), :func:`check_adapter` /
:func:`check_analysis` run them all, and :func:`parametrize_with_checks` turns them into pytest
cases. They work on classes that live outside vidinterp: the adapter under test is put first
with :func:`vidinterp.registry.using_adapter`, so it need not be registered, and the planted
checks use the planted builder registered for its family
(:func:`vidinterp.testing.register_planted`)::

    from vidinterp.testing import parametrize_with_checks

    @parametrize_with_checks([MyAdapter, MyAnalysis])
    def test_conformance(check):
        check()

Adapter checks test mechanics (stable site names, bit-identical generation, restore on error,
geometry from config and inputs, documented hook layouts, every default analysis runs) and
results: the renoise step equals the pipeline's own first denoising step bit for bit,
``timesteps_for`` equals the pipeline's schedule, only the conditional CFG branch is analysed,
and on the family's planted model every map method points at the planted word's object in
every frame (IoU >= 0.9 at the per-frame mean threshold, also at pixel resolution), QK peaks
land in the object, the motion head ranks first and lambda2 orders the planted layers.

Analysis checks test that results are labelled Datasets, that runs merge, that no ``P x P``
tensor is allocated, float32 results under a bfloat16 model, that the analysis reads nothing it
does not declare in ``requires`` (everything else, the unconditional rows included, is NaN in
its visits), that it runs on every family whose site kinds it reads, and that its
``(concept, frame, y, x)`` maps localise the planted words on every planted family it reads.

A check that does not apply (an analysis that does not merge, an image-to-video pipeline for a
step that needs a text-only call) raises :class:`CheckNotApplicable`, which pytest reports as a
skip with the reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import xarray as xr

from vidinterp.analysis import Analysis

__all__ = [
    "Check",
    "CheckNotApplicable",
    "adapter_checks",
    "analysis_checks",
    "check_adapter",
    "check_analysis",
    "parametrize_with_checks",
    "MAP_DIMS",
    "MIN_IOU",
]

PROMPT = "a red dog walking on green grass"
CONCEPTS = ["dog", "grass"]
STEPS = 3
MAP_DIMS = ("concept", "frame", "y", "x")
#: the planted checks' bar: every frame's map peaks in the mask, IoU at least this everywhere
MIN_IOU = 0.9


class CheckNotApplicable(Exception):
    """Raised by a check that does not apply to the class (the message says why)."""


@dataclass(frozen=True)
class Check:
    """One named check bound to the class it checks (and the tiny variant or planted family it
    runs on). Calling it runs it: it raises ``AssertionError`` naming what was wrong, or
    :class:`CheckNotApplicable` (a pytest skip under pytest)."""

    name: str
    subject: type
    case: str
    function: Callable[..., None]
    arguments: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.subject.__name__}-{self.case}-{self.name}" if self.case else f"{self.subject.__name__}-{self.name}"

    def __call__(self) -> None:
        try:
            self.function(self.subject, *self.arguments)
        except CheckNotApplicable as reason:
            try:
                import pytest
            except ImportError:  # pragma: no cover - outside pytest a not-applicable check passes
                return
            pytest.skip(f"{self.id}: not applicable: {reason}")
        except AssertionError as failure:
            raise AssertionError(f"{self.id} failed: {failure}") from failure


# ==================================================================== shared helpers
def _tiny(adapter_cls, variant: dict[str, Any]):
    return adapter_cls.tiny_pipeline(**variant)


def _adapter(adapter_cls, pipe):
    return adapter_cls(pipe)


def required_inputs(pipe, adapter) -> dict[str, Any]:
    """Inputs a pipeline needs beyond a prompt (image-to-video: a grey first frame)."""
    from PIL import Image

    _, height, width = adapter.default_geometry()
    needed = [name for name, parameter in inspect.signature(pipe.__call__).parameters.items()
              if parameter.default is inspect.Parameter.empty and name not in ("self", "args", "kwargs")]
    return {name: Image.new("RGB", (width, height), (128, 128, 128)) for name in needed if name == "image"}


def _frames(output) -> np.ndarray:
    frames = output.frames[0] if hasattr(output, "frames") else output.images
    return np.round(np.clip(np.asarray(frames), 0, 1) * 255).astype(np.uint8)


def _generate(pipe, adapter, steps: int = STEPS, **extra) -> Any:
    return pipe(prompt=PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np", **adapter.generation_kwargs(*adapter.default_geometry()),
                **required_inputs(pipe, adapter), **extra)


def _processors(adapter) -> list[object]:
    return [adapter.attention_module(spec).processor for spec in adapter.site_specs()]


def _nearest_valid(check: Callable[[int], None], start: int, limit: int = 64) -> int | None:
    """The nearest size other than ``start`` that ``check`` accepts (larger first), or None."""
    for delta in range(1, limit):
        for candidate in (start + delta, start - delta):
            try:
                check(candidate)
                return candidate
            except ValueError:
                continue
    return None


def _results(trace) -> xr.Dataset:
    return xr.merge([trace.maps, trace.heads, trace.layers, trace.diagnostics], compat="override")


def _trace(adapter_cls, pipe, **options):
    import vidinterp
    from vidinterp.registry import using_adapter

    with using_adapter(adapter_cls):
        return vidinterp.trace(pipe, **options)


# ==================================================================== adapter checks: mechanics
def check_sites_have_stable_names(adapter_cls, variant: dict) -> None:
    """Every site is ``blocks.{l}.attn`` or ``blocks.{l}.cross_attn`` and its hook points sit in
    the module tree at the path the graph reports."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    specs = adapter.site_specs()
    assert specs, "an adapter must expose at least one site"
    for spec in specs:
        assert spec.name in (f"blocks.{spec.layer}.attn", f"blocks.{spec.layer}.cross_attn"), spec.name
    with using_adapter(adapter_cls), vidinterp.hooked(pipe) as graph:
        modules = dict(adapter.transformer.named_modules())
        for name in graph.hook_names():
            assert modules[graph.path(name)] is graph.module(name), name


def check_traced_generation_is_bit_identical(adapter_cls, variant: dict) -> None:
    """Tracing with concepts and every hook point hooked leaves the generated video unchanged,
    and every hook point fires."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    reference = _frames(_generate(pipe, adapter))
    seen: set[str] = set()

    def record(name):
        def hook(module, args, output):
            seen.add(name)
            assert torch.isfinite(output).all(), f"{name} produced non-finite values"
        return hook

    with using_adapter(adapter_cls), vidinterp.hooked(pipe) as graph:
        names = graph.hook_names()
    trace = _trace(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS, steps=range(STEPS),
                   hooks={name: record(name) for name in names}, pipeline_kwargs=required_inputs(pipe, adapter),
                   **dict(zip(("num_frames", "height", "width"), adapter.default_geometry())))
    assert np.array_equal(trace.video, reference), "the traced video differs from the untraced one"
    assert seen == set(names), f"hook points that never fired: {sorted(set(names) - seen)}"


def check_restored_after_error(adapter_cls, variant: dict) -> None:
    """A hook that raises and a KeyboardInterrupt both leave the original processors and no
    hooks behind, and the model generates as before."""
    from vidinterp.sites import SiteProcessor

    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    originals = _processors(adapter)
    reference = _frames(_generate(pipe, adapter))
    first_site = adapter.site_specs()[0].name

    def explode(module, args, output):
        raise RuntimeError("boom from a hook")

    def interrupt(step):
        raise KeyboardInterrupt

    for options in ({"hooks": {f"{first_site}.hook_q": explode}}, {"on_step": interrupt}):
        try:
            _trace(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS,
                   pipeline_kwargs=required_inputs(pipe, adapter), **options)
        except (RuntimeError, KeyboardInterrupt):
            pass
        else:
            raise AssertionError(f"the trace did not raise the error of {sorted(options)}")
    assert all(now is before for now, before in zip(_processors(adapter), originals)), "processors not restored"
    assert not any(isinstance(processor, SiteProcessor) for processor in _processors(adapter))
    assert not adapter.transformer._forward_pre_hooks and not adapter.transformer._forward_hooks, "hooks left behind"
    assert np.array_equal(_frames(_generate(pipe, adapter)), reference), "generation changed after the failed trace"


def check_geometry_derived_from_config_and_inputs(adapter_cls, variant: dict) -> None:
    """The adapter accepts more than its native geometry and its maps follow the video's
    geometry (frames, rows, columns of the layout), not a hard-coded one."""
    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    frames, height, width = adapter.default_geometry()
    check = adapter.check_geometry
    other_frames = _nearest_valid(lambda f: check(f, height, width), frames)
    other_width = _nearest_valid(lambda w: check(frames, height, w), width)
    geometries = [(frames, height, width)]
    geometries += [(other_frames, height, width)] if other_frames else []
    geometries += [(frames, height, other_width)] if other_width else []
    assert len(geometries) > 1, "an adapter must accept more than its native geometry"
    for geometry in geometries:
        layout = adapter.layout_for(*geometry)
        trace = _trace(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=2, steps=[1],
                       num_frames=geometry[0], height=geometry[1], width=geometry[2],
                       pipeline_kwargs=required_inputs(pipe, adapter))
        sizes = dict(trace.maps.sizes)
        expected = {"concept": 2, "frame": layout.frames, "y": layout.height, "x": layout.width}
        assert sizes == expected, f"maps of a {geometry} video have sizes {sizes}, expected {expected}"
        assert trace.video.shape[1:3] == geometry[1:], f"video {trace.video.shape} for geometry {geometry}"


def check_hook_tensors_follow_documented_layout(adapter_cls, variant: dict) -> None:
    """Every hook point's tensor has the shape :func:`vidinterp.list_sites` documents."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    shapes: dict[str, tuple] = {}
    with using_adapter(adapter_cls):
        sites = vidinterp.list_sites(pipe, *adapter.default_geometry(), concepts=len(CONCEPTS))
        with vidinterp.hooked(pipe, concepts=CONCEPTS, prompt=PROMPT) as graph:
            for name in graph.hook_names():
                graph.module(name).register_forward_hook(_shape_recorder(shapes, name))
            _generate(pipe, adapter, **adapter.unconditional_branch(1.0))
    assert set(shapes) == set(sites.hook.values), "hook points seen differ from the documented ones"
    for name, shape in shapes.items():
        expected = tuple(int(v) for v in sites["shape"].sel(hook=name).values)
        assert shape == expected, f"{name}: {shape} != documented {expected}"


def _shape_recorder(shapes: dict[str, tuple], name: str) -> Callable:
    def record(module, args, output) -> None:
        shapes.setdefault(name, tuple(output.shape))
    return record


def check_default_analyses_run_in_renoise_mode(adapter_cls, variant: dict) -> None:
    """Renoising a video runs every default analysis to finite ``(concept, frame, y, x)`` maps."""
    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    frames, height, width = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    trace = _trace(adapter_cls, pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=4)
    assert trace.attrs["mode"] == "renoise"
    assert trace.maps.data_vars, "no maps"
    for name, variable in trace.maps.data_vars.items():
        assert variable.dims == MAP_DIMS, f"{name} has dims {variable.dims}"
        assert np.isfinite(variable.values).all(), f"{name} has non-finite values"
        assert list(variable.concept.values) == CONCEPTS, name


# ==================================================================== adapter checks: results
def _recorded_scheduler_step(pipe, adapter, steps: int) -> dict[str, torch.Tensor]:
    """Run the pipeline and record its scheduler's first ``step`` call: the model output, the
    timestep, the latents before and after."""
    scheduler = pipe.scheduler
    original = scheduler.step
    record: dict[str, Any] = {}

    def step(*args, **kwargs):
        output = original(*args, **kwargs)
        if not record:
            bound = inspect.signature(original).bind(*args, **kwargs)
            record.update(model_output=bound.arguments["model_output"].clone(),
                          timestep=bound.arguments["timestep"], sample=bound.arguments["sample"].clone(),
                          next=(output[0] if isinstance(output, tuple) else output.prev_sample).clone())
        return output

    scheduler.step = step
    try:
        _generate(pipe, adapter, steps=steps)
    finally:
        del scheduler.step
    return record


def check_renoise_step_matches_pipeline_step(adapter_cls, variant: dict) -> None:
    """From the latents the pipeline's first denoising step starts at, the adapter's renoise
    path (``timesteps_for``, ``denoiser``, ``scheduler_step``) gives the pipeline's model output
    and next latents bit for bit (so the timestep, CFG and conditioning it passes are the
    pipeline's)."""
    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    if required_inputs(pipe, adapter):
        raise CheckNotApplicable("the pipeline conditions on an input image, which renoising takes from the video")
    steps = 3
    record = _recorded_scheduler_step(pipe, adapter, steps)
    geometry = adapter.default_geometry()
    timesteps = adapter.timesteps_for(steps, geometry)
    assert torch.equal(timesteps[0].to(torch.as_tensor(record["timestep"]).dtype).cpu(),
                       torch.as_tensor(record["timestep"]).cpu().reshape(())), (
        f"first timestep {float(timesteps[0])} != the pipeline's {float(torch.as_tensor(record['timestep']))}")
    latents = adapter.latents_from_pipeline(record["sample"], geometry)
    guidance = _pipeline_default(pipe, "guidance_scale")
    with torch.no_grad():  # as the pipeline and vidinterp.trace run (grad mode may pick other kernels)
        denoise = adapter.denoiser(PROMPT, latents, 1.0 if guidance is None else float(guidance), None)
        output = denoise(latents, timesteps[0].to(latents.device))
    expected_output = adapter.latents_from_pipeline(record["model_output"], geometry)
    assert output.shape == expected_output.shape, f"model output {tuple(output.shape)} != {tuple(expected_output.shape)}"
    assert torch.equal(output.to(expected_output.dtype), expected_output), (
        f"model output differs from the pipeline's: max |difference| "
        f"{float((output.float() - expected_output.float()).abs().max()):.3g}")
    following = adapter.scheduler_step(output, timesteps[0].to(latents.device), latents)
    expected_next = adapter.latents_from_pipeline(record["next"], geometry)
    assert torch.equal(following.to(expected_next.dtype), expected_next), "next latents differ from the pipeline's"


def _pipeline_default(pipe, name: str) -> Any:
    parameter = inspect.signature(pipe.__call__).parameters.get(name)
    return None if parameter is None else parameter.default


def check_timesteps_match_pipeline_schedule(adapter_cls, variant: dict) -> None:
    """``timesteps_for(n, geometry)`` equals the timesteps the pipeline steps through."""
    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    seen: list[float] = []

    def record(pipeline, index, timestep, callback_kwargs):
        seen.append(float(timestep))
        return {}

    steps = 4
    _generate(pipe, adapter, steps=steps, callback_on_step_end=record, callback_on_step_end_tensor_inputs=[])
    expected = [float(t) for t in adapter.timesteps_for(steps, adapter.default_geometry())]
    assert seen == expected, f"pipeline stepped through {seen}, timesteps_for gave {expected}"


class _VisitRecorder(Analysis):
    """Records every tensor part of every analysed visit (the conditional rows it is given)."""

    name = "visit_recorder"
    group = "diagnostics"
    site_kinds = ("joint", "self", "cross")

    def reset(self) -> None:
        self.seen: dict[tuple, list[torch.Tensor]] = {}

    def update(self, visit) -> None:
        for tensor in "qkvz":
            for part in ("visual", "prompt", "concept"):
                if visit.provides(tensor, part):
                    key = (visit.step, visit.site.name, tensor, part)
                    self.seen.setdefault(key, []).append(visit.get(tensor, part).detach().clone())

    def result(self) -> xr.Dataset:
        return xr.Dataset()


def check_only_conditional_rows_analysed(adapter_cls, variant: dict) -> None:
    """With the pipeline's unconditional CFG branch on (``unconditional_branch``), analyses see
    exactly the tensors of the run without it: the conditional branch and nothing else."""
    pipe = _tiny(adapter_cls, variant)
    adapter = _adapter(adapter_cls, pipe)
    runs = []
    for scale in (1.0, 3.0):
        recorder = _VisitRecorder()
        branch = adapter.unconditional_branch(scale)
        guidance = branch.pop("guidance_scale", None)  # trace's own argument; the rest goes to the pipeline
        _trace(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=2, steps=[0],
               analyses=[recorder], negative_prompt="a blue cat sleeping in a white room", guidance_scale=guidance,
               pipeline_kwargs={**required_inputs(pipe, adapter), **branch})
        runs.append(recorder.seen)
    plain, guided = runs
    assert plain, "no visit was analysed"
    assert set(guided) == set(plain), f"visits differ with CFG on: {sorted(set(guided) ^ set(plain))[:4]}"
    for key, tensors in plain.items():
        assert len(guided[key]) == len(tensors), f"{key}: {len(guided[key])} visits with CFG on, {len(tensors)} without"
        for without, with_cfg in zip(tensors, guided[key]):
            assert with_cfg.shape == without.shape, f"{key}: {tuple(with_cfg.shape)} != {tuple(without.shape)}"
            assert torch.allclose(with_cfg.float(), without.float(), atol=1e-5, rtol=1e-4), (
                f"{key}: the analysed tensors change when the unconditional branch runs (max |difference| "
                f"{float((with_cfg.float() - without.float()).abs().max()):.3g}): unconditional rows are analysed")


# ==================================================================== adapter checks: planted answers
_PLANTED_SCORES: dict[tuple[type, str], dict[str, Any]] = {}


def _planted(adapter_cls, family: str) -> tuple[Any, dict[str, Any]]:
    """The planted pipeline of ``family`` and its :func:`planted_scores` under ``adapter_cls``
    (computed once per class)."""
    from vidinterp.registry import using_adapter
    from vidinterp.testing.planted import planted_families, planted_pipeline, planted_scores

    if family not in planted_families():
        raise AssertionError(f"no planted pipeline for family {family!r}: register a builder with "
                             f"vidinterp.testing.register_planted({family!r})")
    key = (adapter_cls, family)
    if key not in _PLANTED_SCORES:
        pipe = planted_pipeline(family)
        with using_adapter(adapter_cls):
            _PLANTED_SCORES[key] = {"pipe": pipe, "scores": planted_scores(pipe)}
    cached = _PLANTED_SCORES[key]
    return cached["pipe"], cached["scores"]


def _assert_localises(rows: dict[tuple[str, str], tuple[float, float, float]], what: str) -> None:
    assert rows, f"no {what} to score"
    failing = {key: tuple(round(v, 3) for v in value) for key, value in rows.items()
               if value[0] < 1.0 or value[2] < MIN_IOU}
    assert not failing, (f"{what} miss the planted objects (method, word): (pointing, mean IoU, worst IoU) = "
                         f"{failing}; expected pointing 1.0 and IoU >= {MIN_IOU} in every frame")


def check_planted_maps_localise(adapter_cls, family: str) -> None:
    """On the planted model, every map method points into each planted word's token mask in
    every frame and reaches IoU >= 0.9 at the per-frame mean threshold."""
    pipe, scores = _planted(adapter_cls, family)
    design = pipe.vidinterp_planted
    grid = (design.token_frames, *design.token_grid)
    wrong = {method: shape for method, shape in scores["grids"].items() if shape != grid}
    assert not wrong, f"map grids (frames, rows, columns) {wrong} differ from the planted model's {grid}"
    _assert_localises(scores["maps"], "maps")


def check_planted_pixel_maps(adapter_cls, family: str) -> None:
    """Maps taken to pixel resolution (:func:`vidinterp.pixels.pixel_maps`) land on the planted
    objects' pixels in the pixel frames the latent mapping samples (space and time)."""
    _, scores = _planted(adapter_cls, family)
    _assert_localises(scores["pixel_maps"], "pixel-resolution maps")


def check_planted_qk_peaks(adapter_cls, family: str) -> None:
    """The localising head's QK peak lies inside each planted word's mask in every frame."""
    _, scores = _planted(adapter_cls, family)
    assert scores["qk_peaks"], "no QK-peak positions were recorded"
    missing = {word: share for word, share in scores["qk_peaks"].items() if share < 1.0}
    assert not missing, f"QK peaks inside the mask (share of frames): {missing}; expected 1.0"


def check_planted_motion_head_ranks_first(adapter_cls, family: str) -> None:
    """The planted motion head has the highest frame-separation score (CHI) of its layer."""
    pipe, scores = _planted(adapter_cls, family)
    if pipe.vidinterp_planted.motion is None:
        raise CheckNotApplicable("a one-frame (image) model has no motion head")
    assert scores["motion_rank"] == 1, f"the planted motion head ranks {scores['motion_rank']} in its layer, expected 1"


def check_planted_lambda2_order(adapter_cls, family: str) -> None:
    """lambda2 orders the planted layers as designed: the identity layer near 1, the uniform
    layer near 0, every other layer in between."""
    pipe, scores = _planted(adapter_cls, family)
    design = pipe.vidinterp_planted
    values = scores["lambda2"]
    assert values, "no lambda2 layer scores"
    identity, uniform = values[design.identity_layer], values[design.uniform_layer]
    assert identity > 0.95, f"identity layer {design.identity_layer}: lambda2 {identity:.3f}, expected > 0.95"
    assert uniform < 0.05, f"uniform layer {design.uniform_layer}: lambda2 {uniform:.3f}, expected < 0.05"
    outside = {layer: round(value, 3) for layer, value in values.items() if not uniform - 1e-6 <= value <= identity + 1e-6}
    assert not outside, f"layers {outside} fall outside [uniform {uniform:.3f}, identity {identity:.3f}]"


def check_planted_concept_words(adapter_cls, family: str) -> None:
    """Each concept keeps its own map whatever its place in the concept list: with the planted
    words reversed and another word of the prompt in between, each word's maps still point at
    its own object."""
    from vidinterp.registry import using_adapter
    from vidinterp.testing.planted import map_scores, planted_token_masks, planted_trace

    pipe, _ = _planted(adapter_cls, family)
    design = pipe.vidinterp_planted
    words = list(design.words)
    concepts = [words[-1], "square", *reversed(words[:-1])]
    with using_adapter(adapter_cls):
        trace, clip = planted_trace(pipe, analyses=_map_analyses(adapter_cls, pipe), concepts=concepts)
    masks = planted_token_masks(clip, design)
    rows = {}
    for method, variable in trace.maps.data_vars.items():
        if variable.dims == MAP_DIMS:
            assert list(variable.concept.values) == concepts, f"{method} concepts {list(variable.concept.values)}"
            for word in words:
                rows[(method, word)] = map_scores(variable.sel(concept=word).values, masks[word])
    _assert_localises(rows, f"maps with concepts {concepts}")


def _map_analyses(adapter_cls, pipe) -> list:
    """One instance of every registered map analysis the family's sites allow."""
    from vidinterp.analyses._maps import MapAnalysis
    from vidinterp.registry import analysis_classes

    kinds = {spec.kind for spec in adapter_cls(pipe).site_specs()}
    frames = pipe.vidinterp_planted.token_frames
    return [cls() for cls in analysis_classes().values()
            if issubclass(cls, MapAnalysis) and kinds & set(cls.site_kinds) and cls.min_frames <= frames]


# ==================================================================== analysis checks
def _tiny_pipe(family: str = "cogvideox"):
    from vidinterp.testing import tiny_pipeline

    return tiny_pipeline(family)


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


def _renoise(pipe, analysis, **options):
    import vidinterp

    from vidinterp.registry import adapter_for

    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis],
                           num_inference_steps=4, **options)


def check_result_is_well_formed(analysis_cls) -> None:
    """The result is a non-empty Dataset whose every dim has a coordinate; maps are finite and
    labelled with the concepts."""
    result = _results(_renoise(_tiny_pipe(), analysis_cls()))
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
    pipe = _tiny_pipe()
    whole, first, second = analysis_cls(), analysis_cls(), analysis_cls()

    def traced(analysis, steps):
        return vidinterp.trace(pipe, prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis], num_inference_steps=4,
                               steps=steps)

    expected = _results(traced(whole, [2, 3]))
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
    vidinterp.trace(_tiny_pipe(), prompt=PROMPT, concepts=CONCEPTS, analyses=[analysis], num_inference_steps=2,
                    steps=[1], height=128, width=192)
    tokens = 1152 + 16
    assert probe.largest > 0, "the analysis computed nothing"
    assert probe.largest < tokens * tokens // 4, (
        f"the analysis allocated {probe.largest} elements (P x P = {tokens * tokens})")


def check_float32_results_with_bfloat16_model(analysis_cls) -> None:
    """Under a bfloat16 model, floating results are float32 or float64 and finite."""
    pipe = _tiny_pipe()
    pipe.transformer.to(torch.bfloat16)
    for name, variable in _results(_renoise(pipe, analysis_cls())).data_vars.items():
        if np.issubdtype(variable.dtype, np.floating):
            assert variable.dtype in (np.float32, np.float64), f"{name} is {variable.dtype}"
            assert np.isfinite(variable.values).all() or name.startswith("separation"), f"{name} is not finite"


def _restricted(visit, requires: Iterable[tuple[str, str]]):
    """A copy of ``visit`` in which everything the analysis did not declare is NaN: token parts
    of undeclared (tensor, part) pairs, the unconditional rows, undeclared concept tensors."""
    declared = set(requires)
    rows = visit.layout.conditional_rows
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
        pipe = _tiny_pipe(family)
        plain, restricted = analysis_cls(), analysis_cls()
        observe = restricted.observe
        restricted.observe = lambda visit, observe=observe: observe(_restricted(visit, restricted.requires))
        guidance = {"guidance_scale": 3.0} if family in ("cogvideox", "sd3") else {}
        expected = _results(_renoise(pipe, plain, **guidance))
        result = _results(_renoise(pipe, restricted, **guidance))
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
        pipe = _tiny_pipe(family)
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
        result = _results(_renoise(_tiny_pipe(family), analysis_cls()))
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
    _assert_localises(rows, f"{family} maps")


# ==================================================================== listing and running
ADAPTER_VARIANT_CHECKS = (
    check_sites_have_stable_names,
    check_traced_generation_is_bit_identical,
    check_restored_after_error,
    check_geometry_derived_from_config_and_inputs,
    check_hook_tensors_follow_documented_layout,
    check_default_analyses_run_in_renoise_mode,
    check_renoise_step_matches_pipeline_step,
    check_timesteps_match_pipeline_schedule,
    check_only_conditional_rows_analysed,
)
ADAPTER_PLANTED_CHECKS = (
    check_planted_maps_localise,
    check_planted_pixel_maps,
    check_planted_qk_peaks,
    check_planted_motion_head_ranks_first,
    check_planted_lambda2_order,
    check_planted_concept_words,
)
ANALYSIS_CHECKS = (
    check_declares_requirements,
    check_result_is_well_formed,
    check_streaming_runs_merge,
    check_no_p_by_p_allocation,
    check_float32_results_with_bfloat16_model,
    check_reads_only_what_it_requires,
    check_runs_on_every_family_it_reads,
)


def _name(function: Callable) -> str:
    return function.__name__.removeprefix("check_")


def adapter_checks(adapter_cls) -> list[Check]:
    """Every check of an adapter class: the mechanics and result checks once per tiny variant
    (``adapter_cls.tiny_variants()``), the planted checks on its family's planted model."""
    checks = [Check(_name(function), adapter_cls, variant_name, function, (variant,))
              for variant_name, variant in adapter_cls.tiny_variants().items() for function in ADAPTER_VARIANT_CHECKS]
    checks += [Check(_name(function), adapter_cls, "planted", function, (adapter_cls.family,))
               for function in ADAPTER_PLANTED_CHECKS]
    return checks


def analysis_checks(analysis_cls) -> list[Check]:
    """Every check of an analysis class; for map analyses (``group == "maps"``) also the planted
    localisation, once per planted family whose site kinds it reads."""
    from vidinterp.registry import adapter_class
    from vidinterp.testing.planted import planted_families, planted_pipeline

    checks = [Check(_name(function), analysis_cls, "", function) for function in ANALYSIS_CHECKS]
    if analysis_cls.group != "maps":
        return checks
    for family in planted_families():
        pipe = planted_pipeline(family)
        kinds = {spec.kind for spec in adapter_class(family)(pipe).site_specs()}
        if kinds & set(analysis_cls.site_kinds) and analysis_cls.min_frames <= pipe.vidinterp_planted.token_frames:
            checks.append(Check(_name(check_planted_localisation), analysis_cls, family, check_planted_localisation,
                                (family,)))
    return checks


def _checks_of(cls) -> list[Check]:
    from vidinterp.adapter import Adapter
    from vidinterp.analysis import Analysis

    if isinstance(cls, type) and issubclass(cls, Adapter):
        return adapter_checks(cls)
    if isinstance(cls, type) and issubclass(cls, Analysis):
        return analysis_checks(cls)
    raise TypeError(f"conformance checks take Adapter or Analysis subclasses, got {cls!r}")


def _run_all(checks: list[Check]) -> list[str]:
    """Run ``checks``; return the ids of those that do not apply. Raises on the first failure."""
    skipped = []
    for check in checks:
        try:
            check.function(check.subject, *check.arguments)
        except CheckNotApplicable:
            skipped.append(check.id)
        except AssertionError as failure:
            raise AssertionError(f"{check.id} failed: {failure}") from failure
    return skipped


def check_adapter(adapter_cls) -> list[str]:
    """Run every adapter check on ``adapter_cls`` (which need not be registered). Raises
    ``AssertionError`` naming the first failing check; returns the ids of checks that do not
    apply."""
    return _run_all(adapter_checks(adapter_cls))


def check_analysis(analysis_cls) -> list[str]:
    """Run every analysis check on ``analysis_cls``. Raises ``AssertionError`` naming the first
    failing check; returns the ids of checks that do not apply."""
    return _run_all(analysis_checks(analysis_cls))


def parametrize_with_checks(classes: Iterable[type]):
    """A ``pytest.mark.parametrize`` over every check of every class (adapters and analyses),
    one test case per check, named ``<Class>-<variant>-<check>``."""
    import pytest

    checks = [check for cls in classes for check in _checks_of(cls)]
    return pytest.mark.parametrize("check", checks, ids=[check.id for check in checks])
