"""The evaluation runner: every clip of a dataset traced once, one result file per clip.

:func:`evaluate` walks the clips of a :class:`~vidinterp.datasets.records.ClipSource` (the first
``limit`` clip ids, then this process's shard, :func:`vidinterp.evaluation.sharding.shard`),
fits each record to the model's geometry (:mod:`vidinterp.evaluation.fitting`), runs the
benchmark's task once for all methods (:mod:`vidinterp.evaluation.tasks`: one
``vidinterp.trace`` with every analysis) and writes ``<out_dir>/clips/<clip_id>.json``.

**Result file** (JSON, ``format`` :data:`RESULT_FORMAT`, ``version`` 1): ``benchmark``,
``clip_id``, ``status`` (``"ok"`` or ``"error"``), ``error`` (``"<ExceptionType>: message"`` or
``null``), ``scores`` ``{method: {metric: per-clip value}}``, ``samples`` ``{method: {metric:
[values]}}`` (NaN written as ``null``), ``notes``, ``judgements`` (``{method: [verdict, ...]}``: a
judge's scores and raw replies, for MLS), ``methods``, ``model``, ``fit`` (how the clip
was fitted), ``rank``, ``seconds`` ``{"load", "run", "total"}`` (wall-clock).

**Atomic and resumable.** A file is written to a temporary name in the same folder, flushed and
renamed into place, so a file at the final name is always complete; a run killed mid-clip leaves
no result for that clip (a stray ``.tmp`` file at most). A clip whose result file exists is
skipped, so rerunning the same command resumes; error results are skipped too unless
``retry_errors`` is set. A result file is reused as it is, whatever model, methods or settings
made it: use a new ``out_dir`` when changing them.

**Failures.** A clip whose loading, fitting or run raises a ``ValueError`` (the readers'
:class:`~vidinterp.datasets.records.DatasetLayoutError`, video decode errors, bad geometry), an
``OSError``, a ``KeyError`` or an out-of-memory error is written as an error result and the run
goes on; anything else (a bug, an interrupt, an unreachable judge) stops the run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidinterp.datasets.records import ClipSource

__all__ = ["RESULT_FORMAT", "RESULT_VERSION", "CLIP_ERRORS", "RunSummary", "evaluate", "result_path",
           "write_result", "read_result", "read_results", "selected_clips"]

RESULT_FORMAT = "vidinterp.evaluation.clip"
RESULT_VERSION = 1


def _clip_errors() -> tuple[type[BaseException], ...]:
    import torch

    errors: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, MemoryError)
    out_of_memory = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return errors + ((out_of_memory,) if out_of_memory is not None else ())


#: Exceptions recorded as a clip's error result (see the module docstring).
CLIP_ERRORS = _clip_errors()


@dataclass(frozen=True)
class RunSummary:
    """What one process of :func:`evaluate` did.

    Attributes:
        clips: this process's clip ids, in order.
        done: ids evaluated now (ok or error).
        skipped: ids whose result file already existed.
        errors: ids evaluated now whose result is an error.
    """

    clips: list[str]
    done: list[str]
    skipped: list[str]
    errors: list[str]


def result_path(out_dir: str | os.PathLike, clip_id: str) -> Path:
    """``<out_dir>/clips/<clip_id>.json``."""
    return Path(out_dir) / "clips" / f"{clip_id}.json"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result`` as JSON at ``path`` atomically (temporary file in the same folder, fsync,
    rename); an earlier file at ``path`` stays intact if anything fails. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            json.dump(_json_ready(result), handle, indent=1, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result file, ``null`` samples and scores read back as NaN.

    Raises:
        ValueError: not a result file of this format (the message names the path).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a JSON result file ({error})") from None
    if not isinstance(data, dict) or (data.get("format"), data.get("version")) != (RESULT_FORMAT, RESULT_VERSION):
        raise ValueError(f"{path} is not a vidinterp evaluation result: expected format {RESULT_FORMAT!r} "
                         f"version {RESULT_VERSION}")
    nan = float("nan")
    for group in ("scores", "samples"):
        data[group] = {method: {metric: ([nan if v is None else v for v in value] if isinstance(value, list)
                                         else nan if value is None else value)
                                for metric, value in metrics.items()}
                       for method, metrics in (data.get(group) or {}).items()}
    return data


def read_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every result file under ``<out_dir>/clips``, sorted by clip id."""
    folder = Path(out_dir) / "clips"
    return sorted((read_result(path) for path in folder.glob("*.json")), key=lambda result: result["clip_id"])


def selected_clips(source: ClipSource, limit: int | None = None) -> list[str]:
    """The clip ids a run covers: the source's (sorted) ids, the first ``limit`` of them."""
    ids = sorted(source.clip_ids())
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer number of clips or None, got {limit!r}")
        ids = ids[:limit]
    return ids


def _run_clip(task, source: ClipSource, clip_id: str, pipe, methods: list[str], *, fit: str, judge,
              trace_options: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
    from vidinterp.evaluation.fitting import fit_record, target_geometry
    from vidinterp.registry import adapter_for

    started = time.perf_counter()
    record = source.load(clip_id)
    record = fit_record(record, target_geometry(adapter_for(pipe), record.num_frames), fit)  # type: ignore[arg-type]
    loaded = time.perf_counter()
    scores = task.run(pipe, record, methods, judge=judge, trace_options=trace_options)
    return ({"scores": scores.scores(), "samples": scores.samples, "notes": scores.notes,
             "judgements": scores.judgements, "fit": record.attrs.get("fit", "geometry kept")}, loaded - started, time.perf_counter() - loaded)


def evaluate(benchmark: str, source: ClipSource, model: Any, methods: Sequence[str] | None, out_dir: str | os.PathLike,
             *, limit: int | None = None, judge: Any = None, fit: str = "crop",
             trace_options: dict[str, Any] | None = None, rank: int = 0, world_size: int = 1,
             retry_errors: bool = False, progress: bool = True, model_name: str | None = None) -> RunSummary:
    """Evaluate ``model`` on ``benchmark`` over ``source``, one result file per clip.

    Args:
        benchmark: a task name of :data:`vidinterp.evaluation.tasks.TASKS`.
        source: the dataset (``vidinterp.datasets.open_dataset(name, path)`` or a
            :class:`~vidinterp.datasets.shapes_source.ShapesSource`).
        model: a loaded diffusers pipeline (:func:`vidinterp.inputs.load_model`).
        methods: map method names (:mod:`vidinterp.evaluation.methods`) or, for the tracking
            benchmarks, trackers; ``None``: the task's defaults.
        out_dir: the run's folder; result files go to ``out_dir/clips``.
        limit: evaluate only the first ``limit`` clip ids (sorted).
        judge: a vision-language judge for MLS (``mevis``); ``None``: mask-based stand-ins.
        fit: ``"crop"`` or ``"pad"``, how frames meet the model's aspect ratio.
        trace_options: more :func:`vidinterp.trace` arguments (``num_inference_steps``,
            ``renoise_step``, ``seed``, ``memory_limit``, ...).
        rank, world_size: this process's shard (:func:`~vidinterp.evaluation.sharding.shard`).
        retry_errors: evaluate again clips whose result file is an error result.
        progress: show a tqdm progress bar.
        model_name: how result files name the model (default: the pipeline's class name).

    Returns:
        A :class:`RunSummary` of this process.

    Raises:
        ValueError: unknown benchmark, bad methods, ``limit`` or ``fit``, checked before any clip.
    """
    from tqdm.auto import tqdm

    from vidinterp.evaluation.sharding import shard
    from vidinterp.evaluation.tasks import get_task
    from vidinterp.video import fit_setting

    task = get_task(benchmark)
    methods = task.methods(methods)
    fit = fit_setting(fit)
    clips = shard(selected_clips(source, limit), rank, world_size)
    name = model_name or type(model).__name__
    done, skipped, errors = [], [], []
    bar = tqdm(clips, desc=f"{benchmark} (rank {rank}/{world_size})" if world_size > 1 else benchmark,
               position=rank, disable=not progress, unit="clip")
    for clip_id in bar:
        path = result_path(out_dir, clip_id)
        if path.exists() and not (retry_errors and _is_error(path)):
            skipped.append(clip_id)
            continue
        started = time.perf_counter()
        result: dict[str, Any] = {"format": RESULT_FORMAT, "version": RESULT_VERSION, "benchmark": benchmark,
                                  "clip_id": clip_id, "methods": methods, "model": name, "rank": rank}
        try:
            outcome, load_seconds, run_seconds = _run_clip(task, source, clip_id, model, methods, fit=fit,
                                                           judge=judge, trace_options=dict(trace_options or {}))
            result.update(status="ok", error=None, **outcome)
        except CLIP_ERRORS as error:
            result.update(status="error", error=f"{type(error).__name__}: {error}", scores={}, samples={}, notes={},
                          fit=None)
            load_seconds = run_seconds = float("nan")
            errors.append(clip_id)
        result["seconds"] = {"load": load_seconds, "run": run_seconds, "total": time.perf_counter() - started}
        write_result(path, result)
        done.append(clip_id)
    bar.close()
    return RunSummary(clips=clips, done=done, skipped=skipped, errors=errors)


def _is_error(path: Path) -> bool:
    try:
        return read_result(path)["status"] == "error"
    except ValueError:
        return True
