"""``vidinterp.trace``: one call from a pipeline and a video or prompt to labelled maps."""

from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager
from os import PathLike
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import xarray as xr

from vidinterp.adapter import Adapter, ConceptReduction
from vidinterp.analysis import Analysis, TraceContext
from vidinterp.install import installed
from vidinterp.registry import adapter_for, analysis_classes
from vidinterp.results import GROUPS, Trace
from vidinterp.runtime import Runtime
from vidinterp.selectors import LateSteps
from vidinterp.sites import SiteGraph
from vidinterp.video import as_frames, resample_video, to_model_pixels

__all__ = ["trace", "hooked", "load_pipeline", "list_sites", "default_analyses", "validate_concepts"]

#: Share of the schedule that generation skips before analysing (near-noise steps).
DEFAULT_SKIP_FRACTION = 0.3


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


def default_analyses(adapter: Adapter | None = None, frames: int | None = None) -> list[Analysis]:
    """One instance of every registered analysis marked ``default``; with an ``adapter``, only
    those that read a site kind its model has (e.g. no concept-stream analyses for Wan), and
    with ``frames`` (latent frames) only those that need no more frames (no motion-head
    selection for one-frame image models)."""
    kinds = None if adapter is None else {spec.kind for spec in adapter.site_specs()}
    return [cls() for cls in analysis_classes().values()
            if cls.default and (kinds is None or kinds & set(cls.site_kinds))
            and (frames is None or cls.min_frames <= frames)]


def _checked_analyses(analyses: Iterable[Analysis] | None, adapter: Adapter, frames: int) -> list[Analysis]:
    """The given analyses (default: :func:`default_analyses`), each checked against the model's
    site kinds and the number of latent frames."""
    if analyses is None:
        return default_analyses(adapter, frames)
    analyses = list(analyses)
    if not analyses:
        raise ValueError("analyses must hold at least one analysis; got an empty list")
    kinds = {spec.kind for spec in adapter.site_specs()}
    for analysis in analyses:
        if not kinds & set(analysis.site_kinds):
            raise ValueError(
                f"analysis {analysis.name!r} reads sites of kind {list(analysis.site_kinds)}, but "
                f"{adapter.family} has sites of kind {sorted(kinds)}"
            )
        if analysis.min_frames > frames:
            raise ValueError(
                f"analysis {analysis.name!r} needs at least {analysis.min_frames} latent frames; "
                f"this video has {frames}"
            )
    return analyses


@contextmanager
def hooked(model: Any, concepts: Iterable[str] | None = None, *, prompt: str | None = None,
           concept_reduction: ConceptReduction = "first") -> Iterator[SiteGraph]:
    """Install the site graph on a pipeline's transformer for free-form use (torch hooks,
    nnsight) and yield the :class:`~vidinterp.sites.SiteGraph`. With ``concepts`` the concept
    stream runs in every transformer call. The model is restored on exit, also on error."""
    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    state = None
    if concepts is not None:
        names = validate_concepts(concepts)
        state = adapter.concept_state(adapter.encode_concepts(names, concept_reduction), prompt)
    runtime = Runtime(concept_state=state)
    runtime.cfg_batched = getattr(pipe, "do_classifier_free_guidance", False) is True
    with installed(adapter, runtime) as graph:
        yield graph


def list_sites(model: Any, num_frames: int | None = None, height: int | None = None,
               width: int | None = None, concepts: int = 1) -> xr.Dataset:
    """The sites of a model with the shape of every hook point for a video of the given pixel
    geometry (default: the model's native geometry), batch of one, no CFG.

    Returns a Dataset indexed by ``hook`` (``blocks.{l}.attn.hook_*``) with the variables
    ``shape`` (``[batch, heads, tokens, head_dim]``), ``module`` (path inside the transformer)
    and ``layer``.
    """
    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    default = adapter.default_geometry()
    geometry = (num_frames or default[0], height or default[1], width or default[2])
    layout = adapter.layout_for(*geometry)
    names, shapes, modules, layers = [], [], [], []
    for spec in adapter.site_specs():
        for hook in spec.hook_names:
            names.append(f"{spec.name}.{hook}")
            shapes.append([1, spec.heads, _hook_tokens(spec.kind, hook, layout, concepts), spec.head_dim])
            modules.append(f"{spec.module_path}.processor.{hook}")
            layers.append(spec.layer)
    return xr.Dataset(
        {
            "shape": (("hook", "axis"), np.array(shapes)),
            "module": ("hook", modules),
            "layer": ("hook", layers),
        },
        coords={"hook": names, "axis": ["batch", "heads", "tokens", "head_dim"]},
        attrs={"model": adapter.model_name, "family": adapter.family, "num_frames": geometry[0],
               "height": geometry[1], "width": geometry[2], "frames": layout.frames,
               "grid_height": layout.height, "grid_width": layout.width, "prompt_tokens": layout.prompt_tokens},
    )


def _hook_tokens(kind: str, hook: str, layout, concepts: int) -> int:
    """Token count of a hook point's tensor for a site of ``kind``."""
    if "concept" in hook:
        return concepts
    if kind == "joint":
        return layout.visual_tokens + layout.prompt_tokens
    if kind == "cross" and hook in ("hook_k", "hook_v"):
        return layout.prompt_tokens
    return layout.visual_tokens


def _default_guidance(pipe) -> float:
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(parameter.default) if parameter is not None and parameter.default is not None else 1.0


def _prepare_video(adapter: Adapter, video, num_frames, height, width, resample: bool) -> np.ndarray:
    frames = as_frames(video)
    given = (frames.shape[0], frames.shape[1], frames.shape[2])
    target = (num_frames or given[0], height or given[1], width or given[2])
    if target != given:
        if not resample:
            raise ValueError(
                f"video has {given[0]} frames at {given[1]}x{given[2]}, but {target[0]} frames at "
                f"{target[1]}x{target[2]} were asked for; pass resample=True to resample it"
            )
        frames = resample_video(frames, *target)
    try:
        adapter.check_geometry(*target)
    except ValueError as error:
        hint = "" if resample else "; pass num_frames/height/width with resample=True to resample"
        raise ValueError(f"{error}{hint}") from None
    return frames


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
    resample: bool = False,
    concept_reduction: ConceptReduction = "first",
    hooks: dict[str, Callable] | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    seed: int = 0,
) -> Trace:
    """Trace where and when a video DiT represents ``concepts``.

    Two modes:

    * **generation** (``video=None``): sample from ``prompt``; analyses accumulate while
      sampling over the analysed ``steps`` (default: all but the first
      ``DEFAULT_SKIP_FRACTION`` of the schedule).
    * **renoising** (``video`` given): decode the video (file, ``[F, H, W, 3]`` array or tensor),
      check its geometry (or ``resample=True`` to ``num_frames``/``height``/``width``), VAE-encode
      it with the pipeline's latent scaling, noise it to schedule index ``renoise_step``
      (default: the family's reference, e.g. 30 of 50 for CogVideoX) and run
      ``num_renoise_steps`` denoising steps, all analysed.

    Args:
        model: a diffusers pipeline, or a local path / cached model id.
        concepts: words to map, e.g. ``["dog", "walking"]``.
        analyses: analyses to run (default: every registered default analysis).
        steps: schedule indices to analyse (generation mode).
        concept_reduction: ``"first"`` sub-token (reference) or ``"mean"`` of sub-tokens.
        hooks: ``{hook name: torch forward hook}`` registered on hook points for the run
            (e.g. ``{"blocks.3.attn.hook_z": ablate}``), removed afterwards.
        pipeline_kwargs: extra inputs for ``pipe(...)`` in generation mode (e.g. ``image=`` for
            image-to-video pipelines).
        on_step: called with the step index after each denoising step.
        seed: seeds the noise.

    Returns:
        A :class:`~vidinterp.results.Trace`.
    """
    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    names = validate_concepts(concepts)
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    mode = "generation" if video is None else "renoise"
    if mode == "generation" and not prompt:
        raise ValueError("generation needs a prompt (or pass video= to renoise a real video)")
    guidance = _default_guidance(pipe) if guidance_scale is None else float(guidance_scale)
    if mode == "renoise" and guidance_scale is None and adapter.default_renoise_guidance is not None:
        guidance = adapter.default_renoise_guidance

    if mode == "renoise":
        frames = _prepare_video(adapter, video, num_frames, height, width, resample)
        geometry = tuple(int(size) for size in frames.shape[:3])
    else:
        geometry = tuple(given or default for given, default in
                         zip((num_frames, height, width), adapter.default_geometry()))
    analyses = _checked_analyses(analyses, adapter, adapter.layout_for(*geometry).frames)
    timesteps = adapter.timesteps_for(num_inference_steps, geometry)
    if mode == "renoise":
        start = int(adapter.default_renoise_fraction * num_inference_steps) if renoise_step is None else int(renoise_step)
        if not 0 <= start < num_inference_steps or num_renoise_steps < 1 or start + num_renoise_steps > num_inference_steps:
            raise ValueError(
                f"renoise_step={start} with num_renoise_steps={num_renoise_steps} falls outside the "
                f"schedule: expected 0 <= renoise_step and renoise_step + num_renoise_steps <= "
                f"num_inference_steps={num_inference_steps}"
            )
        run_steps = list(range(start, start + num_renoise_steps))
    else:
        run_steps = list(range(num_inference_steps))
    if steps is None:
        analysed = run_steps if mode == "renoise" else LateSteps(DEFAULT_SKIP_FRACTION).indices(num_inference_steps)
    else:
        analysed = sorted({int(step) for step in steps})
        missing = [step for step in analysed if step not in run_steps]
        if not analysed or missing:
            raise ValueError(
                f"steps {missing or analysed} are outside the steps this trace runs: expected "
                f"indices in {run_steps[0]}..{run_steps[-1]} ({mode}, {num_inference_steps} inference steps)"
            )

    concept_tokens = adapter.encode_concepts(names, concept_reduction)
    context = TraceContext(
        concepts=names,
        num_layers=len({spec.layer for spec in adapter.site_specs()}),
        num_inference_steps=num_inference_steps,
        timesteps=[float(t) for t in timesteps],
        model=adapter.model_name,
    )
    for analysis in analyses:
        analysis.bind(context)
    runtime = Runtime(analyses, steps=analysed, concept_state=adapter.concept_state(concept_tokens, prompt))
    runtime.cfg_batched = adapter.cfg_batched(guidance)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    with ExitStack() as stack:
        graph = stack.enter_context(installed(adapter, runtime))
        for hook_name, function in (hooks or {}).items():
            stack.callback(graph.module(hook_name).register_forward_hook(function).remove)
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
        "num_inference_steps": num_inference_steps,
        "analysed_steps": list(runtime.visited_steps),
        "guidance_scale": guidance,
        "seed": seed,
    }
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
        group: xr.merge(parts, combine_attrs="drop_conflicts", compat="override") if parts else xr.Dataset()
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
