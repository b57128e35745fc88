"""Conformance checks of adapters: mechanics and results on every tiny variant, known answers on
the family's planted model (see :mod:`vidinterp.testing.checks`)."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import numpy as np
import torch

from vidinterp.testing.conformance import (
    CONCEPTS,
    MAP_DIMS,
    PROMPT,
    STEPS,
    CheckNotApplicable,
    TinyBuilder,
    adapter_of,
    assert_localises,
    generate,
    nearest_valid,
    processors_of,
    required_inputs,
    traced,
    video_of,
)
from vidinterp.testing.recorder import VisitRecorder

# -------------------------------------------------------------------- mechanics
def check_sites_have_stable_names(adapter_cls, tiny: TinyBuilder) -> None:
    """Every site is ``blocks.{l}.attn`` or ``blocks.{l}.cross_attn`` and its hook points sit in
    the module tree at the path the graph reports."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    specs = adapter.site_specs()
    assert specs, "an adapter must expose at least one site"
    for spec in specs:
        assert spec.name in (f"blocks.{spec.layer}.attn", f"blocks.{spec.layer}.cross_attn"), spec.name
    with using_adapter(adapter_cls), vidinterp.hooked(pipe) as graph:
        modules = dict(adapter.transformer.named_modules())
        for name in graph.hook_names():
            assert modules[graph.path(name)] is graph.module(name), name


def check_traced_generation_is_bit_identical(adapter_cls, tiny: TinyBuilder) -> None:
    """Tracing with concepts and every hook point hooked leaves the generated video unchanged,
    and every hook point fires."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    reference = video_of(generate(pipe, adapter))
    seen: set[str] = set()

    def record(name):
        def hook(module, args, output):
            seen.add(name)
            assert torch.isfinite(output).all(), f"{name} produced non-finite values"
        return hook

    with using_adapter(adapter_cls), vidinterp.hooked(pipe) as graph:
        names = graph.hook_names()
    trace = traced(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS, steps=range(STEPS),
                   hooks={name: record(name) for name in names}, pipeline_kwargs=required_inputs(pipe, adapter),
                   **dict(zip(("num_frames", "height", "width"), adapter.default_geometry())))
    assert np.array_equal(trace.video, reference), "the traced video differs from the untraced one"
    assert seen == set(names), f"hook points that never fired: {sorted(set(names) - seen)}"


def check_restored_after_error(adapter_cls, tiny: TinyBuilder) -> None:
    """A hook that raises and a KeyboardInterrupt both leave the original processors and no
    hooks behind, and the model generates as before."""
    from vidinterp.processors import SiteProcessor

    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    originals = processors_of(adapter)
    reference = video_of(generate(pipe, adapter))
    first_site = adapter.site_specs()[0].name

    def explode(module, args, output):
        raise RuntimeError("boom from a hook")

    def interrupt(step):
        raise KeyboardInterrupt

    for options in ({"hooks": {f"{first_site}.hook_q": explode}}, {"on_step": interrupt}):
        try:
            traced(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=STEPS,
                   pipeline_kwargs=required_inputs(pipe, adapter), **options)
        except (RuntimeError, KeyboardInterrupt):
            pass
        else:
            raise AssertionError(f"the trace did not raise the error of {sorted(options)}")
    assert all(now is before for now, before in zip(processors_of(adapter), originals)), "processors not restored"
    assert not any(isinstance(processor, SiteProcessor) for processor in processors_of(adapter))
    transformer = adapter.transformer
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks, "torch hooks left behind"
    registry = getattr(transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks, f"diffusers hooks left behind: {list(registry.hooks)}"
    assert "forward" not in transformer.__dict__, "the transformer's forward was left replaced"
    leftovers = [name for name in transformer._modules if name.startswith("vidinterp")]
    assert not leftovers, f"modules left on the transformer: {leftovers}"
    modules = {sys.modules[type(processor).__module__] for processor in processors_of(adapter)}
    patched = [module.__name__ for module in modules if getattr(getattr(module, "dispatch_attention_fn", None),
                                                                 "__wrapped__", None) is not None]
    assert not patched, f"dispatch_attention_fn left routed in {patched}"
    assert np.array_equal(video_of(generate(pipe, adapter)), reference), "generation changed after the failed trace"


def check_geometry_derived_from_config_and_inputs(adapter_cls, tiny: TinyBuilder) -> None:
    """The adapter accepts more than its native geometry and its maps follow the video's
    geometry (frames, rows, columns of the layout), not a hard-coded one."""
    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    frames, height, width = adapter.default_geometry()
    check = adapter.check_geometry
    other_frames = nearest_valid(lambda f: check(f, height, width), frames)
    other_width = nearest_valid(lambda w: check(frames, height, w), width)
    geometries = [(frames, height, width)]
    geometries += [(other_frames, height, width)] if other_frames else []
    geometries += [(frames, height, other_width)] if other_width else []
    assert len(geometries) > 1, "an adapter must accept more than its native geometry"
    for geometry in geometries:
        layout = adapter.layout_for(*geometry)
        trace = traced(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=2, steps=[1],
                       num_frames=geometry[0], height=geometry[1], width=geometry[2],
                       pipeline_kwargs=required_inputs(pipe, adapter))
        sizes = dict(trace.maps.sizes)
        expected = {"concept": 2, "frame": layout.frames, "y": layout.height, "x": layout.width}
        assert sizes == expected, f"maps of a {geometry} video have sizes {sizes}, expected {expected}"
        assert trace.video.shape[1:3] == geometry[1:], f"video {trace.video.shape} for geometry {geometry}"


def check_hook_tensors_follow_documented_layout(adapter_cls, tiny: TinyBuilder) -> None:
    """Every hook point's tensor has the shape :func:`vidinterp.list_sites` documents."""
    import vidinterp
    from vidinterp.registry import using_adapter

    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    shapes: dict[str, tuple] = {}
    with using_adapter(adapter_cls):
        sites = vidinterp.list_sites(pipe, *adapter.default_geometry(), concepts=len(CONCEPTS))
        with vidinterp.hooked(pipe, concepts=CONCEPTS, prompt=PROMPT) as graph:
            for name in graph.hook_names():
                graph.module(name).register_forward_hook(_shape_recorder(shapes, name))
            generate(pipe, adapter, **adapter.unconditional_branch(1.0))
    assert set(shapes) == set(sites.hook.values), "hook points seen differ from the documented ones"
    for name, shape in shapes.items():
        expected = tuple(int(v) for v in sites["shape"].sel(hook=name).values)
        assert shape == expected, f"{name}: {shape} != documented {expected}"


def _shape_recorder(shapes: dict[str, tuple], name: str) -> Callable:
    def record(module, args, output) -> None:
        shapes.setdefault(name, tuple(output.shape))
    return record


def check_default_analyses_run_in_renoise_mode(adapter_cls, tiny: TinyBuilder) -> None:
    """Renoising a video runs every default analysis to finite ``(concept, frame, y, x)`` maps."""
    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    frames, height, width = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    trace = traced(adapter_cls, pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=4)
    assert trace.attrs["mode"] == "renoise"
    assert trace.maps.data_vars, "no maps"
    for name, variable in trace.maps.data_vars.items():
        assert variable.dims == MAP_DIMS, f"{name} has dims {variable.dims}"
        assert np.isfinite(variable.values).all(), f"{name} has non-finite values"
        assert list(variable.concept.values) == CONCEPTS, name


# -------------------------------------------------------------------- results
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
        generate(pipe, adapter, steps=steps)
    finally:
        del scheduler.step
    return record


def check_renoise_step_matches_pipeline_step(adapter_cls, tiny: TinyBuilder) -> None:
    """From the latents the pipeline's first denoising step starts at, the adapter's renoise
    path (``timesteps_for``, ``denoiser``, ``scheduler_step``) gives the pipeline's model output
    and next latents bit for bit (so the timestep, CFG and conditioning it passes are the
    pipeline's)."""
    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
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


def check_timesteps_match_pipeline_schedule(adapter_cls, tiny: TinyBuilder) -> None:
    """``timesteps_for(n, geometry)`` equals the timesteps the pipeline steps through."""
    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    seen: list[float] = []

    def record(pipeline, index, timestep, callback_kwargs):
        seen.append(float(timestep))
        return {}

    steps = 4
    generate(pipe, adapter, steps=steps, callback_on_step_end=record, callback_on_step_end_tensor_inputs=[])
    expected = [float(t) for t in adapter.timesteps_for(steps, adapter.default_geometry())]
    assert seen == expected, f"pipeline stepped through {seen}, timesteps_for gave {expected}"



def check_only_conditional_branch_analysed(adapter_cls, tiny: TinyBuilder) -> None:
    """With the pipeline's unconditional CFG branch on (``unconditional_branch``), analyses see
    exactly the tensors of the run without it: the conditional branch and nothing else."""
    pipe = tiny()
    adapter = adapter_of(adapter_cls, pipe)
    runs = []
    for scale in (1.0, 3.0):
        recorder = VisitRecorder(keep="all")
        branch = adapter.unconditional_branch(scale)
        guidance = branch.pop("guidance_scale", None)  # trace's own argument; the rest goes to the pipeline
        traced(adapter_cls, pipe, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=2, steps=[0],
               analyses=[recorder], negative_prompt="a blue cat sleeping in a white room", guidance_scale=guidance,
               pipeline_kwargs={**required_inputs(pipe, adapter), **branch})
        runs.append(recorder.tensors)
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


# -------------------------------------------------------------------- planted answers
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


def check_planted_maps_localise(adapter_cls, family: str) -> None:
    """On the planted model, every map method points into each planted word's token mask in
    every frame and reaches IoU >= 0.9 at the per-frame mean threshold."""
    pipe, scores = _planted(adapter_cls, family)
    design = pipe.vidinterp_planted
    grid = (design.token_frames, *design.token_grid)
    wrong = {method: shape for method, shape in scores["grids"].items() if shape != grid}
    assert not wrong, f"map grids (frames, rows, columns) {wrong} differ from the planted model's {grid}"
    assert_localises(scores["maps"], "maps")


def check_planted_pixel_maps(adapter_cls, family: str) -> None:
    """Maps taken to pixel resolution (:func:`vidinterp.pixels.pixel_maps`) land on the planted
    objects' pixels in the pixel frames the latent mapping samples (space and time)."""
    _, scores = _planted(adapter_cls, family)
    assert_localises(scores["pixel_maps"], "pixel-resolution maps")


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
    assert_localises(rows, f"maps with concepts {concepts}")


def _map_analyses(adapter_cls, pipe) -> list:
    """One instance of every registered map analysis the family's sites allow."""
    from vidinterp.maps import MapAnalysis
    from vidinterp.registry import analysis_classes

    kinds = {spec.kind for spec in adapter_cls(pipe).site_specs()}
    frames = pipe.vidinterp_planted.token_frames
    return [cls() for cls in analysis_classes().values()
            if issubclass(cls, MapAnalysis) and kinds & set(cls.site_kinds) and cls.min_frames <= frames]


ADAPTER_VARIANT_CHECKS = (
    check_sites_have_stable_names,
    check_traced_generation_is_bit_identical,
    check_restored_after_error,
    check_geometry_derived_from_config_and_inputs,
    check_hook_tensors_follow_documented_layout,
    check_default_analyses_run_in_renoise_mode,
    check_renoise_step_matches_pipeline_step,
    check_timesteps_match_pipeline_schedule,
    check_only_conditional_branch_analysed,
)
ADAPTER_PLANTED_CHECKS = (
    check_planted_maps_localise,
    check_planted_pixel_maps,
    check_planted_qk_peaks,
    check_planted_motion_head_ranks_first,
    check_planted_lambda2_order,
    check_planted_concept_words,
)
