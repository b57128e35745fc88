"""``vidinterp.trace``: one call from a pipeline and a video or prompt to labelled maps."""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from os import PathLike
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
import xarray as xr

from vidinterp import arguments
from vidinterp.adapter import Adapter, ConceptReduction
from vidinterp.analysis import Analysis
from vidinterp.context import CALIBRATION_ATTRIBUTE, TraceContext
from vidinterp.branches import Branch
from vidinterp.concept_stream import concept_state
from vidinterp.hooks import with_context
from vidinterp.install import installed
from vidinterp.interventions import Intervention, cfg_weight, check_interventions
from vidinterp.memory import memory_guard, memory_limit_setting
from vidinterp.registry import analysis_classes
from vidinterp.results import GROUPS, Trace
from vidinterp.runtime import Runtime
from vidinterp.selectors import LateSteps
from vidinterp.video import prepare_video, to_model_pixels

__all__ = ["trace", "default_analyses"]

#: Share of the schedule that generation skips before analysing (near-noise steps).
DEFAULT_SKIP_FRACTION = 0.3


def default_analyses(adapter: Adapter | None = None, frames: int | None = None) -> list[Analysis]:
    """One instance of every registered analysis marked ``default``; with an ``adapter``, only
    those that read a site kind its model has (e.g. no concept-stream analyses for Wan), and
    with ``frames`` (latent frames) only those that need no more frames (no motion-head
    selection for one-frame image models)."""
    kinds = None if adapter is None else {spec.kind for spec in adapter.site_specs()}
    return [cls() for cls in analysis_classes().values()
            if cls.default and (kinds is None or kinds & set(cls.site_kinds))
            and (frames is None or cls.min_frames <= frames)]


def _checked_analyses(analyses: list[Analysis] | None, adapter: Adapter, frames: int) -> list[Analysis]:
    """The analyses of :func:`vidinterp.arguments.analysis_list` (default:
    :func:`default_analyses`), checked against the model's site kinds and the number of latent
    frames."""
    if analyses is None:
        return default_analyses(adapter, frames)
    arguments.check_analyses_fit(analyses, adapter, frames)
    return analyses


def analysis_runtime(adapter: Adapter, analyses: list[Analysis], concepts: list[str], concept_tokens,
                     *, prompt: str | None, timesteps: torch.Tensor, steps: list[int], guidance: float,
                     branch: Branch = "conditional", concept_slots: int | None = None,
                     concept_reduction: ConceptReduction = "first") -> Runtime:
    """The :class:`~vidinterp.runtime.Runtime` of a trace, built as :func:`trace` builds it:
    ``analyses`` bound to the trace's :class:`~vidinterp.context.TraceContext`, the concept
    stream of ``concept_tokens`` (``adapter.encode_concepts(concepts, ...)``, padded to
    ``concept_slots``), the analysed schedule indices ``steps`` of ``timesteps`` and the CFG
    fallback for ``guidance``. Install it with :func:`vidinterp.install.installed` to run a
    traced forward in a loop of one's own (the benchmarks do)."""
    context = TraceContext(
        concepts=list(concepts),
        num_layers=len({spec.layer for spec in adapter.site_specs()}),
        num_inference_steps=len(timesteps),
        timesteps=[float(t) for t in timesteps],
        model=adapter.model_name,
        calibration=dict(getattr(adapter.pipe, CALIBRATION_ATTRIBUTE, None) or {}),
        concept_slots=len(concepts) if concept_slots is None else concept_slots,
        locate_prompt_words=(lambda: adapter.prompt_words(prompt, list(concepts), concept_reduction)) if prompt else None,
    )
    for analysis in analyses:
        analysis.bind(context)
    runtime = Runtime(analyses, steps=steps, concepts=concept_state(adapter, concept_tokens, prompt), branch=branch)
    runtime.cfg_batched = adapter.cfg_batched(guidance)
    return runtime


def _concept_slots(adapter: Adapter, requested: int | str | None, concepts: int, geometry: tuple) -> int:
    """The number of concept-stream slots of a trace (see ``trace``'s ``concept_slots``), from
    the setting :func:`vidinterp.arguments.concept_slots_setting` checked."""
    if requested is None:
        return concepts
    if requested == "text_length":
        slots = adapter.layout_for(*geometry).prompt_tokens
        if slots < concepts:
            raise ValueError(f"concept_slots='text_length' gives {slots} slots (the prompt's tokens), fewer than "
                             f"the {concepts} concepts; pass an integer >= {concepts}")
        return slots
    return requested


def _default_guidance(pipe) -> float:
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(parameter.default) if parameter is not None and parameter.default is not None else 1.0


def trace(
    model: Any,
    video: str | PathLike | np.ndarray | torch.Tensor | None = None,
    prompt: str | None = None,
    concepts: Iterable[str] = (),
    analyses: Iterable[Analysis] | None = None,
    steps: Iterable[int] | None = None,
    *,
    num_inference_steps: int = 50,
    renoise_step: int | None = None,
    num_renoise_steps: int = 1,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    resample: bool | Literal["auto"] | None = None,
    fit: Literal["crop", "pad"] = "crop",
    concept_reduction: ConceptReduction = "first",
    concept_slots: int | Literal["text_length"] | None = None,
    branch: Branch = "conditional",
    hooks: dict[str, Callable] | None = None,
    interventions: Iterable[Intervention] | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    seed: int = 0,
    memory_limit: int | str | None = None,
) -> Trace:
    """Trace where and when a video DiT represents ``concepts``.

    Two modes:

    * **generation** (``video=None``): sample from ``prompt``; analyses accumulate while
      sampling over the analysed ``steps`` (default: all but the first
      ``DEFAULT_SKIP_FRACTION`` of the schedule).
    * **renoising** (``video`` given): decode the video (see ``video`` below), fit it to the
      model's geometry (see ``resample``), VAE-encode
      it with the pipeline's latent scaling, noise it to schedule index ``renoise_step``
      (default: the family's reference, e.g. 30 of 50 for CogVideoX) and run
      ``num_renoise_steps`` denoising steps, all analysed.

    Args:
        model: a diffusers pipeline, or a local path / cached model id.
        video: the clip to renoise: a video file (mp4, mov, avi, mkv, webm, ... via PyAV), an
            animated GIF/WebP or still image, a folder of images (natural name order), or a
            ``[F, H, W, 3]`` uint8 array / float array in ``[0, 1]`` or tensor
            (:mod:`vidinterp.video`). ``None``: generate from ``prompt``.
        num_frames, height, width: the pixel geometry to run at; each one not given is the
            model's native one (``adapter.default_geometry()``; with ``resample=False``, the
            clip's own).
        resample: ``None``/``"auto"`` (default): a clip that has the geometry above runs
            unchanged, any other is fitted to it (frames picked evenly over its duration,
            nearest by time; aspect by ``fit``) with a one-line
            :class:`~vidinterp.video.VideoResampledWarning`; ``True``: always fit, no notice;
            ``False``: never change the clip, which must be a geometry the model takes (a
            ``ValueError`` names both geometries otherwise).
        fit: how a clip's aspect ratio meets the model's: ``"crop"`` (centre crop, default) or
            ``"pad"`` (black bars).
        concepts: words to map, e.g. ``["dog", "walking"]``.
        analyses: analyses to run: instances and/or registered names (``["imap",
            CrossAttention()]``; a name runs the registered class with its defaults). Default:
            every registered default analysis the model and video allow.
        steps: schedule indices to analyse (generation mode).
        concept_reduction: ``"first"`` sub-token (reference) or ``"mean"`` of sub-tokens.
        concept_slots: run the concept stream with this many slots: the concepts, then zero
            embeddings (``"text_length"``: as many as prompt tokens, the official IMAP code's
            convention, in which real concepts also attend to the padding rows and z-scores and
            softmaxes run over every slot). Results keep the named concepts only. Default: no
            padding.
        branch: the classifier-free-guidance branch the analyses read: ``"conditional"``
            (default) or ``"unconditional"`` (the negative prompt's; see
            :mod:`vidinterp.branches`).
        hooks: ``{hook name: torch forward hook}`` registered on hook points for the run
            (e.g. ``{"blocks.3.attn.hook_z": ablate}``), removed afterwards. A hook that takes a
            ``context`` argument also gets a :class:`~vidinterp.hooks.HookContext` (step,
            timestep, site, announced branch, analysed rows), to act on one step or branch.
        interventions: changes to sampling applied during the run (:mod:`vidinterp.interventions`),
            e.g. ``[CrossFrameGuidance(scale=1.0, layers=[13, 14, 15])]`` (cross-frame attention
            guidance: an extra, never analysed, perturbed branch per conditional call; the
            analyses read the unperturbed branches). Default: none.
        pipeline_kwargs: extra inputs for ``pipe(...)`` in generation mode (e.g. ``image=`` for
            image-to-video pipelines).
        on_step: called with the step index after each denoising step.
        seed: seeds the noise.
        memory_limit: the memory the trace may use, in bytes (``int``) or as a size string
            (``"24GB"``, ``"24GiB"``); ``"off"`` skips the memory guard. Default: the environment
            variable ``VIDINTERP_MEMORY_LIMIT``, else the device's free memory. Before any model
            work the guard (:mod:`vidinterp.memory`) estimates the peak memory of this geometry
            and raises :class:`~vidinterp.memory.InsufficientMemoryError` (a ``MemoryError``)
            naming the estimate, the limit and settings that fit, or, when only a tiled VAE
            fits, tiles the VAE for the run (one :class:`~vidinterp.memory.VAETilingWarning`;
            the VAE's settings are restored afterwards).

    Every argument is checked before any work starts (:mod:`vidinterp.arguments`: integers are
    ints, never floats, even ``9.0``; a bad value raises ``TypeError``/``ValueError`` naming the
    argument, the value and what is expected, and leaves the model untouched).

    Returns:
        A :class:`~vidinterp.results.Trace`.
    """
    memory_limit_setting(memory_limit)  # checked first: a bad value fails before a model is loaded
    checked = arguments.trace_arguments(
        model, video=video, prompt=prompt, concepts=concepts, analyses=analyses, steps=steps,
        num_inference_steps=num_inference_steps, renoise_step=renoise_step, num_renoise_steps=num_renoise_steps,
        guidance_scale=guidance_scale, negative_prompt=negative_prompt, num_frames=num_frames, height=height,
        width=width, concept_reduction=concept_reduction, concept_slots=concept_slots,
        branch=branch, hooks=hooks, pipeline_kwargs=pipeline_kwargs, on_step=on_step, seed=seed,
    )
    pipe, adapter, names, analyses, steps = checked.pipe, checked.adapter, checked.concepts, checked.analyses, checked.steps
    num_inference_steps, renoise_step, num_renoise_steps = (checked.num_inference_steps, checked.renoise_step,
                                                            checked.num_renoise_steps)
    guidance_scale, prompt, negative_prompt, seed = checked.guidance_scale, checked.prompt, checked.negative_prompt, checked.seed
    num_frames, height, width, concept_slots = checked.num_frames, checked.height, checked.width, checked.concept_slots
    hooks, pipeline_kwargs = checked.hooks, checked.pipeline_kwargs
    interventions = check_interventions(interventions, pipeline_kwargs)
    mode = "generation" if video is None else "renoise"
    guidance = _default_guidance(pipe) if guidance_scale is None else float(guidance_scale)
    if mode == "renoise" and guidance_scale is None and adapter.default_renoise_guidance is not None:
        guidance = adapter.default_renoise_guidance

    if mode == "renoise":
        frames = prepare_video(adapter, video, num_frames, height, width, resample, fit)
        geometry = tuple(int(size) for size in frames.shape[:3])
    else:
        geometry = tuple(given or default for given, default in
                         zip((num_frames, height, width), adapter.default_geometry()))
    analyses = _checked_analyses(analyses, adapter, adapter.layout_for(*geometry).frames)
    for intervention in interventions:
        intervention.check(adapter, geometry)
    slots = _concept_slots(adapter, concept_slots, len(names), geometry)
    memory_plan = memory_guard(adapter, geometry, mode=mode, cfg_batched=adapter.cfg_batched(guidance),
                               concept_slots=slots, analyses=len(analyses), memory_limit=memory_limit)
    timesteps = adapter.timesteps_for(num_inference_steps, geometry)
    run_steps = arguments.schedule_steps(adapter, mode == "renoise", num_inference_steps, renoise_step,
                                         num_renoise_steps, steps)
    if steps is None:
        analysed = run_steps if mode == "renoise" else LateSteps(DEFAULT_SKIP_FRACTION).indices(num_inference_steps)
    else:
        analysed = sorted(set(steps))

    concept_tokens = adapter.encode_concepts(names, concept_reduction)
    if slots > len(names):
        concept_tokens = concept_tokens.padded(slots)
    runtime = analysis_runtime(adapter, analyses, names, concept_tokens, prompt=prompt, timesteps=timesteps,
                               steps=analysed, guidance=guidance, branch=branch, concept_slots=slots,
                               concept_reduction=concept_reduction)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    with ExitStack() as stack:
        stack.enter_context(memory_plan)
        graph = stack.enter_context(installed(adapter, runtime))
        for hook_name, function in (hooks or {}).items():
            site = graph[hook_name.rpartition(".")[0]].spec
            hook = with_context(function, hook_name, site, runtime)
            stack.callback(graph.module(hook_name).register_forward_hook(hook).remove)
        weight = cfg_weight(adapter, guidance, negative_prompt, pipeline_kwargs or {}, mode) if interventions else 1.0
        for intervention in interventions:
            stack.enter_context(intervention.applied(adapter, runtime, graph, weight))
        with torch.no_grad():
            if mode == "generation":
                frames = _generate(adapter, runtime, prompt, negative_prompt, guidance, num_inference_steps,
                                   (num_frames, height, width), generator, on_step, pipeline_kwargs or {})
            else:
                _renoise(adapter, runtime, frames, prompt or "", negative_prompt, guidance, timesteps,
                         run_steps, generator, on_step)

    attrs = {
        "model": adapter.model_name,
        "family": adapter.family,
        "mode": mode,
        "prompt": prompt or "",
        "concepts": ", ".join(names),
        "concept_reduction": concept_reduction,
        "concept_slots": slots,
        "branch": branch,
        "num_inference_steps": num_inference_steps,
        "analysed_steps": list(runtime.visited_steps),
        "guidance_scale": guidance,
        "seed": seed,
    }
    if interventions:
        attrs["interventions"] = "; ".join(repr(intervention) for intervention in interventions)
    grouped: dict[str, list[xr.Dataset]] = {group: [] for group in GROUPS}
    for analysis in analyses:
        result = analysis.result()
        settings = {**attrs, **{f"{analysis.name}.{k}": v for k, v in analysis.settings().items()}}
        for name, variable in result.data_vars.items():
            # a variable may name its own group (e.g. the heads a map method selected)
            part = result[[name]]
            part.attrs = settings
            grouped[variable.attrs.get("group", analysis.group)].append(part)
    datasets = {
        group: xr.merge(parts, combine_attrs="drop_conflicts", compat="override", join="outer") if parts else xr.Dataset()
        for group, parts in grouped.items()
    }
    return Trace(video=frames, attrs=attrs, **datasets)


def _generate(adapter: Adapter, runtime: Runtime, prompt: str, negative_prompt: str | None, guidance: float,
              num_inference_steps: int, geometry: tuple, generator, on_step, pipeline_kwargs: dict) -> np.ndarray:
    pipe = adapter.pipe
    geometry = tuple(given or default for given, default in zip(geometry, adapter.default_geometry()))
    kwargs = adapter.generation_kwargs(*geometry)
    runtime.pixel_frames = geometry[0]
    runtime.set_step(0)
    runtime.set_timestep_from(lambda: pipe.scheduler.timesteps)

    def step_end(pipeline, index: int, timestep, callback_kwargs: dict) -> dict:
        if on_step is not None:
            on_step(index)
        runtime.set_step(index + 1)
        return {}

    output = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="np",
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=[],
        **kwargs,
        **pipeline_kwargs,
    )
    frames = output.frames[0] if hasattr(output, "frames") else output.images
    return np.round(np.clip(np.asarray(frames), 0, 1) * 255).astype(np.uint8)


def _renoise(adapter: Adapter, runtime: Runtime, frames: np.ndarray, prompt: str, negative_prompt: str | None,
             guidance: float, timesteps: torch.Tensor, run_steps: list[int], generator, on_step) -> None:
    runtime.pixel_frames = len(frames)
    latents = adapter.encode_video(to_model_pixels(frames), generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    timesteps = timesteps.to(latents.device)
    latents = adapter.noise_latents(latents, noise, timesteps[run_steps[0]])
    denoise = adapter.denoiser(prompt, latents, guidance, negative_prompt)
    for position, step in enumerate(run_steps):
        runtime.set_step(step, timesteps[step])
        output = denoise(latents, timesteps[step])
        if position + 1 < len(run_steps):
            latents = adapter.scheduler_step(output, timesteps[step], latents).to(latents.dtype)
        if on_step is not None:
            on_step(step)
