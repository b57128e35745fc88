"""Validation of the arguments of :func:`vidinterp.trace` and :func:`vidinterp.hooked`.

Every check runs before any work starts: before a pipeline is loaded where it can, and always
before the model is touched (no processor replaced, no hook registered, no step run), so a bad
argument leaves weights, processors, hooks, the attention backend and files as they were. Each
error names the argument, the value it got and what is expected; a value of the wrong type is a
``TypeError``, a value of the right type outside what is allowed a ``ValueError``.

Conventions:

* **Integers** (``num_inference_steps``, ``renoise_step``, ``num_renoise_steps``, ``seed``,
  ``num_frames``, ``height``, ``width``, ``steps``, ``concept_slots``) are Python ``int`` or
  NumPy/torch integer scalars (anything ``operator.index`` takes). ``bool`` and every float
  are refused, integral ones such as ``9.0`` too (as ``range(9.0)`` refuses them): a float
  where a count is expected is usually a computation gone wrong, so it is not rounded silently.
* **Numbers** (``guidance_scale``) are real numbers (``int``, ``float``, NumPy scalars), finite
  and ``>= 0``; not ``bool`` and not strings.
* **Analyses** are :class:`~vidinterp.analysis.Analysis` instances or registered analysis names
  (``vidinterp.analysis_classes()``; a name builds the registered class with its defaults), mixed
  freely; a single instance or name needs no list. An analysis *class* is refused with a hint to
  instantiate it, so that every instance's settings are explicit.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vidinterp.adapter import CONCEPT_REDUCTIONS, Adapter
from vidinterp.analysis import Analysis
from vidinterp.branches import BRANCHES
from vidinterp.hooks import takes_context
from vidinterp.inputs import load_pipeline, validate_concepts
from vidinterp.registry import adapter_for, analysis_classes

__all__ = [
    "TraceArguments",
    "trace_arguments",
    "hooked_arguments",
    "integer",
    "optional_integer",
    "finite_number",
    "optional_text",
    "one_of",
    "concept_reduction_choice",
    "optional_mapping",
    "optional_callable",
    "step_indices",
    "analysis_list",
    "check_analyses_fit",
    "hook_functions",
    "pipeline_arguments",
    "concept_slots_setting",
    "schedule_steps",
    "TRACE_PIPELINE_ARGUMENTS",
]

#: Arguments of ``pipe(...)`` that :func:`vidinterp.trace` sets itself (with the geometry keys
#: of ``Adapter.generation_kwargs``), so ``pipeline_kwargs`` may not set them.
TRACE_PIPELINE_ARGUMENTS = (
    "prompt",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "generator",
    "output_type",
    "return_dict",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
)

HOOKS_EXAMPLE = "{hook-point name: function}, e.g. {'blocks.0.attn.hook_z': ablate}"
PIPELINE_KWARGS_EXAMPLE = "of extra pipe(...) arguments, e.g. {'image': first_frame}"

#: The largest seed a torch generator takes (seeds are ``0 .. 2**64 - 1``).
MAX_SEED = 2**64 - 1


# ---------------------------------------------------------------------------- single values
def _described(value: Any) -> str:
    """``repr(value)`` with its type, shortened: ``9.0 (float)``, ``'4' (str)``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _integer_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` within ``minimum..maximum`` (either bound optional).

    Raises ``TypeError`` for a non-integer (``bool``, any float including ``9.0``, strings) and
    ``ValueError`` for an integer out of range, e.g. ``num_inference_steps must be an integer
    >= 1, got 0``."""
    expected = _integer_range(minimum, maximum)
    if _is_bool(value):
        raise TypeError(f"{name} must be {expected}, got {_described(value)}")
    try:
        number = operator.index(value)
    except TypeError:
        hint = ""
        if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
            hint = f"; floats are refused, even integral ones: pass {int(value)}"
        raise TypeError(f"{name} must be {expected}, got {_described(value)}{hint}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def optional_integer(name: str, value: Any, minimum: int | None = None) -> int | None:
    """``None``, or ``value`` checked by :func:`integer` (``"... must be None or an integer
    >= 1"``)."""
    if value is None:
        return None
    try:
        return integer(name, value, minimum)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace(f"{name} must be ", f"{name} must be None or ", 1)) from None


def finite_number(name: str, value: Any, minimum: float | None = None) -> float:
    """``value`` as a finite ``float`` ``>= minimum``: ``TypeError`` for non-numbers (strings,
    ``bool``, ``None``), ``ValueError`` for NaN, infinities and values under ``minimum``."""
    expected = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {_described(value)}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def optional_text(name: str, value: Any, hint: str = "") -> str | None:
    """``None`` or a string; ``TypeError`` otherwise (``hint`` is appended to the message)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {_described(value)}{hint}")
    return value


def one_of(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (of the same type: ``1`` is not ``True``), else
    ``ValueError`` listing them."""
    if not any(isinstance(value, type(choice)) and value == choice for choice in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def concept_reduction_choice(value: Any) -> str:
    """``concept_reduction``: one of :data:`~vidinterp.adapter.CONCEPT_REDUCTIONS`."""
    if not any(isinstance(value, str) and value == choice for choice in CONCEPT_REDUCTIONS):
        raise ValueError(f"concept_reduction={value!r} is invalid: concept reduction must be one of "
                         f"{CONCEPT_REDUCTIONS} (first sub-token or mean of sub-tokens)")
    return value


def optional_mapping(name: str, value: Any, example: str) -> Mapping | None:
    """``None`` or a mapping with string keys; ``TypeError`` otherwise (``example`` shows the
    expected form)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be None or a dict {example}, got {_described(value)}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be strings, got {_described(key)} in {name}={dict(value)!r}")
    return value


def optional_callable(name: str, value: Any, expected: str = "a callable") -> Callable | None:
    """``None`` or a callable; ``TypeError`` otherwise."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be None or {expected}, got {_described(value)}")
    return value


def step_indices(value: Any) -> list[int] | None:
    """``steps``: ``None`` or schedule indices (integers >= 0), sorted and without repeats."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"steps must be None or a list of schedule indices (integers >= 0), e.g. steps=[3, 4], "
                        f"got {_described(value)}")
    indices = list(value)
    if not indices:
        raise ValueError("steps must hold at least one schedule index, got an empty list (leave steps=None for the default)")
    checked = []
    for position, step in enumerate(indices):
        try:
            checked.append(integer(f"steps[{position}]", step, minimum=0))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} in steps={indices!r}") from None
    return sorted(set(checked))


# ---------------------------------------------------------------------------- analyses
def analysis_list(value: Any) -> list[Analysis] | None:
    """``analyses``: ``None`` (the defaults, chosen once the model and video are known) or
    :class:`~vidinterp.analysis.Analysis` instances and registered analysis names, mixed; a
    name builds the registered class with its default settings. Refuses empty lists, unknown
    names (listing the registered ones), classes (instantiate them), other objects and two
    analyses of one name (results are keyed by name)."""
    if value is None:
        return None
    if isinstance(value, (str, Analysis, type)):
        value = [value]
    registered = analysis_classes()
    expected = f"Analysis instances or registered analysis names {sorted(registered)}"
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"analyses must be None or a list of {expected}, got {_described(value)}")
    items = list(value)
    if not items:
        raise ValueError("analyses must hold at least one analysis; got an empty list")
    analyses = []
    for index, item in enumerate(items):
        if isinstance(item, Analysis):
            analyses.append(item)
        elif isinstance(item, str):
            analyses.append(_registered_analysis(index, item, registered))
        elif isinstance(item, type) and issubclass(item, Analysis):
            name = getattr(item, "name", None)
            alternative = f" or pass its registered name {name!r}" if registered.get(name) is item else ""
            raise TypeError(
                f"analyses[{index}] is the class {item.__name__}, not an instance: instantiate it "
                f"({item.__name__}(), with any settings){alternative}"
            )
        else:
            raise TypeError(f"analyses[{index}] must be an Analysis instance or a registered analysis name "
                            f"{sorted(registered)}, got {_described(item)}")
    names = [analysis.name for analysis in analyses]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"analyses must have distinct names (results are keyed by name); {repeated} appear more than once: "
            f"give each instance its own name, e.g. analysis.name = '{repeated[0]}_k3'"
        )
    return analyses


def _registered_analysis(index: int, name: str, registered: Mapping[str, type[Analysis]]) -> Analysis:
    """A default instance of the analysis registered as ``name``."""
    cls = registered.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(registered), n=3)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"analyses[{index}]: unknown analysis name {name!r}; {hint}registered analyses are "
                         f"{sorted(registered)}")
    try:
        return cls()
    except TypeError as error:
        raise TypeError(f"analyses[{index}]: the analysis {name!r} ({cls.__name__}) has no default settings "
                        f"({error}); pass an instance, {cls.__name__}(...)") from None


def check_analyses_fit(analyses: list[Analysis], adapter: Adapter, frames: int) -> None:
    """Raise ``ValueError`` when an analysis reads a site kind the model lacks, or needs more
    latent frames than the traced video has (``frames``; e.g. IMAP's motion-head selection on
    a one-frame image model), naming the analyses and the frame count."""
    kinds = {spec.kind for spec in adapter.site_specs()}
    for analysis in analyses:
        if not kinds & set(analysis.site_kinds):
            raise ValueError(
                f"analysis {analysis.name!r} reads sites of kind {list(analysis.site_kinds)}, but "
                f"{adapter.family} has sites of kind {sorted(kinds)}"
            )
    short = [analysis for analysis in analyses if analysis.min_frames > frames]
    if short:
        names = [analysis.name for analysis in short]
        needed = max(analysis.min_frames for analysis in short)
        which = f"analysis {names[0]!r} needs" if len(names) == 1 else f"analyses {names} need"
        they = "it" if len(names) == 1 else "them"
        raise ValueError(
            f"{which} at least {needed} latent frames (to compare frames); this video has {frames} latent "
            f"frame{'' if frames == 1 else 's'} ({adapter.family}): leave {they} out of analyses, or trace a "
            f"video with more frames"
        )


# ---------------------------------------------------------------------------- model-dependent
def hook_functions(value: Any, adapter: Adapter) -> dict[str, Callable]:
    """``hooks``: ``None`` or ``{hook-point name: torch forward hook}`` with names of the
    model's hook points (close matches suggested for an unknown one) and callables taking
    ``(module, args, output)`` (and optionally ``context=``)."""
    if optional_mapping("hooks", value, HOOKS_EXAMPLE) is None:
        return {}
    valid = [f"{spec.name}.{hook}" for spec in adapter.site_specs() for hook in spec.hook_names]
    for name, function in value.items():
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"did you mean {close}? " if close else ""
            examples = ", ".join(repr(example) for example in valid[:4])
            raise ValueError(
                f"hooks: unknown hook point {name!r} on {adapter.family}; {hint}hook points are named "
                f"'blocks.{{layer}}.<site>.hook_*', e.g. {examples} ({len(valid)} in all; "
                f"vidinterp.list_sites(pipe) lists them)"
            )
        if not callable(function):
            raise TypeError(f"hooks[{name!r}] must be a callable torch forward hook (module, args, output) -> None "
                            f"or a tensor, got {_described(function)}")
        _check_hook_signature(name, function)
    return dict(value)


def _check_hook_signature(name: str, function: Callable) -> None:
    """``TypeError`` if ``function`` cannot be called as ``function(module, args, output)``
    (plus ``context=`` when it takes one). Callables without an inspectable signature pass."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None, **({"context": None} if takes_context(function) else {}))
    except TypeError:
        raise TypeError(f"hooks[{name!r}] must take (module, args, output) like a torch forward hook (and "
                        f"optionally a context argument), but its signature is {signature}") from None


def pipeline_arguments(value: Any, pipe: Any, adapter: Adapter, geometry: tuple[int, int, int],
                       generation: bool) -> dict[str, Any]:
    """``pipeline_kwargs``: ``None`` or a dict of extra ``pipe(...)`` arguments for generation,
    none of which :func:`vidinterp.trace` sets itself (:data:`TRACE_PIPELINE_ARGUMENTS` and
    the geometry keys) and, unless ``pipe.__call__`` takes ``**kwargs``, all of them arguments
    of the pipeline."""
    if optional_mapping("pipeline_kwargs", value, PIPELINE_KWARGS_EXAMPLE) is None:
        return {}
    if not value:
        return {}
    if not generation:
        raise ValueError(f"pipeline_kwargs {sorted(value)} apply to generation (video=None) only; renoising a video "
                         f"calls no pipeline: leave pipeline_kwargs out")
    reserved = set(TRACE_PIPELINE_ARGUMENTS) | set(adapter.generation_kwargs(*geometry))
    clash = sorted(reserved & set(value))
    if clash:
        raise ValueError(
            f"pipeline_kwargs must not set {clash}: vidinterp.trace sets them itself (pass prompt=, negative_prompt=, "
            f"num_inference_steps=, guidance_scale=, seed=, num_frames=/height=/width= to trace instead)"
        )
    parameters = inspect.signature(pipe.__call__).parameters
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        unknown = sorted(set(value) - set(parameters))
        if unknown:
            close = {key: difflib.get_close_matches(key, list(parameters), n=1) for key in unknown}
            hints = [f"{key!r} -> {match[0]!r}" for key, match in close.items() if match]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ValueError(f"pipeline_kwargs {unknown} are not arguments of {type(pipe).__name__}.__call__{hint}")
    return dict(value)


def concept_slots_setting(value: Any, concepts: int, adapter: Adapter) -> int | str | None:
    """``concept_slots``: ``None``, ``"text_length"`` or an integer ``>=`` the number of
    concepts; padding (more slots than concepts, or ``"text_length"``) only on models with a
    concept stream. ``"text_length"`` is resolved once the geometry is known."""
    if value is None:
        return None
    expected = f"concept_slots must be None, 'text_length' or an integer >= the number of concepts ({concepts})"
    if isinstance(value, str):
        if value != "text_length":
            raise ValueError(f"{expected}, got {value!r}")
    else:
        try:
            value = integer("concept_slots", value, minimum=concepts)
        except TypeError:
            raise TypeError(f"{expected}, got {_described(value)}") from None
        except ValueError:
            raise ValueError(f"{expected}, got {value!r}") from None
    if (value == "text_length" or value > concepts) and not adapter.has_concept_stream:
        raise ValueError(f"{adapter.family} has no concept stream (concepts are prompt words): its concept slots "
                         f"cannot be padded; leave concept_slots unset (got {value!r})")
    return value


def schedule_steps(adapter: Adapter, renoising: bool, num_inference_steps: int, renoise_step: int | None,
                   num_renoise_steps: int, steps: list[int] | None) -> list[int]:
    """The schedule indices a trace runs: the renoising window (``renoise_step`` .. ``+
    num_renoise_steps``; default start: the family's reference fraction) or the whole schedule.
    Raises ``ValueError`` when the window or the analysed ``steps`` fall outside it."""
    if renoising:
        start = int(adapter.default_renoise_fraction * num_inference_steps) if renoise_step is None else renoise_step
        if not 0 <= start < num_inference_steps or start + num_renoise_steps > num_inference_steps:
            raise ValueError(
                f"renoise_step={start} with num_renoise_steps={num_renoise_steps} falls outside the "
                f"schedule: expected 0 <= renoise_step and renoise_step + num_renoise_steps <= "
                f"num_inference_steps={num_inference_steps}"
            )
        run_steps = list(range(start, start + num_renoise_steps))
    else:
        if renoise_step is not None or num_renoise_steps != 1:
            given = "renoise_step" if renoise_step is not None else "num_renoise_steps"
            value = renoise_step if renoise_step is not None else num_renoise_steps
            raise ValueError(f"{given}={value!r} applies to renoising a video (video=...); generation runs the "
                             f"whole schedule: leave {given} out or pass video=")
        run_steps = list(range(num_inference_steps))
    if steps is not None:
        missing = [step for step in steps if step not in run_steps]
        if missing:
            mode = "renoise" if renoising else "generation"
            raise ValueError(
                f"steps {missing} are outside the steps this trace runs: expected "
                f"indices in {run_steps[0]}..{run_steps[-1]} ({mode}, {num_inference_steps} inference steps)"
            )
    return run_steps


# ---------------------------------------------------------------------------- entry points
@dataclass(frozen=True)
class TraceArguments:
    """The checked arguments of one :func:`vidinterp.trace` call, normalised: plain ``int`` and
    ``float`` values, concept names stripped, analysis names built into instances, ``steps``
    sorted, ``hooks`` and ``pipeline_kwargs`` as dicts (empty when not given)."""

    pipe: Any
    adapter: Adapter
    concepts: list[str]
    analyses: list[Analysis] | None
    steps: list[int] | None
    num_inference_steps: int
    renoise_step: int | None
    num_renoise_steps: int
    guidance_scale: float | None
    prompt: str | None
    negative_prompt: str | None
    num_frames: int | None
    height: int | None
    width: int | None
    concept_reduction: str
    concept_slots: int | str | None
    branch: str
    hooks: dict[str, Callable]
    pipeline_kwargs: dict[str, Any]
    on_step: Callable[[int], None] | None
    seed: int


def trace_arguments(
    model: Any,
    *,
    video: Any,
    prompt: Any,
    concepts: Any,
    analyses: Any,
    steps: Any,
    num_inference_steps: Any,
    renoise_step: Any,
    num_renoise_steps: Any,
    guidance_scale: Any,
    negative_prompt: Any,
    num_frames: Any,
    height: Any,
    width: Any,
    concept_reduction: Any,
    concept_slots: Any,
    branch: Any,
    hooks: Any,
    pipeline_kwargs: Any,
    on_step: Any,
    seed: Any,
) -> TraceArguments:
    """Check every argument of :func:`vidinterp.trace` but the clip's (``video``, ``resample``
    and ``fit`` are checked by :func:`vidinterp.video.prepare_video`; here only whether a video
    is given): first those that need no model, then, with the pipeline loaded, those that
    depend on it (the generation geometry, hook-point names, ``pipeline_kwargs``, concept-slot
    padding, the schedule window). Touches no model."""
    renoising = video is not None
    names = validate_concepts(concepts)
    prompt = optional_text("prompt", prompt, hint="; one prompt per trace (batches are not supported)")
    if not renoising and (prompt is None or not prompt.strip()):
        raise ValueError(f"generation needs a prompt (or pass video= to renoise a real video), got prompt={prompt!r}")
    negative_prompt = optional_text("negative_prompt", negative_prompt)
    checked_analyses = analysis_list(analyses)
    checked_steps = step_indices(steps)
    num_inference_steps = integer("num_inference_steps", num_inference_steps, minimum=1)
    renoise_step = optional_integer("renoise_step", renoise_step, minimum=0)
    num_renoise_steps = integer("num_renoise_steps", num_renoise_steps, minimum=1)
    guidance = None if guidance_scale is None else finite_number("guidance_scale", guidance_scale, minimum=0)
    geometry = [optional_integer(name, value, minimum=1)
                for name, value in (("num_frames", num_frames), ("height", height), ("width", width))]
    concept_reduction = concept_reduction_choice(concept_reduction)
    branch = one_of("branch", branch, BRANCHES)
    optional_callable("on_step", on_step, "a callable taking the step index")
    seed = integer("seed", seed, minimum=0, maximum=MAX_SEED)
    optional_mapping("hooks", hooks, HOOKS_EXAMPLE)  # names and functions once the model is known
    optional_mapping("pipeline_kwargs", pipeline_kwargs, PIPELINE_KWARGS_EXAMPLE)

    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    generation_geometry = tuple(given or default for given, default in zip(geometry, adapter.default_geometry()))
    if not renoising:  # a clip's geometry is checked by prepare_video
        adapter.check_geometry(*generation_geometry)
    checked_hooks = hook_functions(hooks, adapter)
    checked_pipeline_kwargs = pipeline_arguments(pipeline_kwargs, pipe, adapter, generation_geometry,
                                                 generation=not renoising)
    slots = concept_slots_setting(concept_slots, len(names), adapter)
    schedule_steps(adapter, renoising, num_inference_steps, renoise_step, num_renoise_steps, checked_steps)
    return TraceArguments(
        pipe=pipe, adapter=adapter, concepts=names, analyses=checked_analyses, steps=checked_steps,
        num_inference_steps=num_inference_steps, renoise_step=renoise_step, num_renoise_steps=num_renoise_steps,
        guidance_scale=guidance, prompt=prompt, negative_prompt=negative_prompt, num_frames=geometry[0],
        height=geometry[1], width=geometry[2], concept_reduction=concept_reduction,
        concept_slots=slots, branch=branch, hooks=checked_hooks, pipeline_kwargs=checked_pipeline_kwargs,
        on_step=on_step, seed=seed,
    )


def hooked_arguments(model: Any, concepts: Any, prompt: Any, concept_reduction: Any) -> tuple[Any, Adapter, list[str] | None]:
    """Check the arguments of :func:`vidinterp.hooked` (``concepts`` may be ``None``: no concept
    stream), then load the pipeline: ``(pipe, adapter, concept names or None)``."""
    names = None if concepts is None else validate_concepts(concepts)
    optional_text("prompt", prompt, hint="; one prompt (batches are not supported)")
    concept_reduction_choice(concept_reduction)
    pipe = load_pipeline(model)
    return pipe, adapter_for(pipe), names
