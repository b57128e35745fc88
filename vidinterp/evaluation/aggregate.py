"""Result files of a run -> a table shaped like the IMAP paper's (methods x metrics).

* **mean**: per (method, metric), the mean over clips of the per-clip scores (clips where the
  metric does not apply, and error results, left out); ``clips`` counts the clips in each mean.
* **95% confidence interval**: percentile bootstrap over clips. Each of ``resamples`` (default
  :data:`DEFAULT_RESAMPLES` = 1000) resamples draws as many clips as the run has ok results,
  with replacement, from ``numpy.random.default_rng(seed)``; the same draws serve every cell
  (paired across methods), each cell's resample mean skipping its missing clips. The interval is
  the 2.5% and 97.5% quantiles (``numpy.nanquantile``, linear) of those means.
* **errors**: the number (and ids) of clips whose result is an error.

Outputs (:func:`write_outputs`): ``table.md`` (markdown: each cell ``mean [low, high]``),
``table.csv`` (one row per method and metric: ``method,metric,mean,ci_low,ci_high,clips``),
and the per-clip scores as an ``xarray.Dataset`` with variable ``score`` ``float64 (clip,
variant, metric)`` (``variant``: the method; not named ``method``, which ``DataArray.sel`` takes as its
fill-method argument) (NaN: not applicable or error) and ``failed`` ``int8 (clip)``, written as
``scores.nc`` (netCDF-4, h5netcdf) and ``scores.zarr``; both open lazily
(``xr.open_dataset("scores.nc", chunks={})``, ``xr.open_zarr("scores.zarr")``). Every file is
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["DEFAULT_RESAMPLES", "Table", "bootstrap_intervals", "per_clip_scores", "aggregate", "write_outputs"]

DEFAULT_RESAMPLES = 1000


def per_clip_scores(results: Sequence[dict[str, Any]], methods: Sequence[str] | None = None,
                    metrics: Sequence[str] | None = None) -> xr.Dataset:
    """The per-clip scores of ``results`` (:func:`vidinterp.evaluation.runner.read_results`) as a
    Dataset (module docstring). ``methods``/``metrics`` fix the order (default: first seen)."""
    methods = list(methods) if methods is not None else list(dict.fromkeys(
        method for result in results for method in result.get("methods", [])))
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(
        metric for result in results for per_method in result["scores"].values() for metric in per_method))
    score = np.full((len(results), len(methods), len(metrics)), np.nan)
    for c, result in enumerate(results):
        for m, method in enumerate(methods):
            for k, metric in enumerate(metrics):
                score[c, m, k] = result["scores"].get(method, {}).get(metric, np.nan)
    failed = np.array([result["status"] != "ok" for result in results], dtype=np.int8)
    benchmark = results[0]["benchmark"] if results else ""
    return xr.Dataset(
        {"score": (("clip", "variant", "metric"), score, {"long_name": "per-clip score (NaN: not applicable or error)"}),
         "failed": (("clip",), failed, {"long_name": "1 where the clip's result is an error"})},
        coords={"clip": [result["clip_id"] for result in results], "variant": methods, "metric": metrics},
        attrs={"benchmark": benchmark},
    )


def bootstrap_intervals(score: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap intervals of the mean over clips of ``score`` ``float [clips, ...]``
    (NaN: missing), resampling clips (module docstring).

    Returns:
        ``(low, high)``, each ``float64 [...]`` (NaN where a cell has no clip).
    """
    score = np.asarray(score, dtype=np.float64)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    cells = score.shape[1:]
    if score.shape[0] == 0:
        return np.full(cells, np.nan), np.full(cells, np.nan)
    draws = np.random.default_rng(seed).integers(0, score.shape[0], size=(resamples, score.shape[0]))
    sampled = score[draws]  # [resamples, clips, ...]
    present = np.isfinite(sampled)
    counts = present.sum(axis=1)
    sums = np.where(present, sampled, 0.0).sum(axis=1)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    tail = (1 - confidence) / 2
    with warnings.catch_warnings():  # a cell without any clip: all-NaN slice, NaN interval
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(means, [tail, 1 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class Table:
    """The aggregated table of one run.

    Attributes:
        benchmark: the benchmark's name.
        scores: the per-clip Dataset (:func:`per_clip_scores`).
        mean, low, high: ``float64 [methods, metrics]`` mean over clips and its interval.
        clips: ``int [methods, metrics]`` clips in each mean.
        errors: ids of the clips whose result is an error.
        resamples, seed, confidence: the bootstrap's settings.
    """

    benchmark: str
    scores: xr.Dataset
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    clips: np.ndarray
    errors: list[str]
    resamples: int
    seed: int
    confidence: float

    @property
    def methods(self) -> list[str]:
        """Row names."""
        return [str(method) for method in self.scores["variant"].values]

    @property
    def metrics(self) -> list[str]:
        """Column names."""
        return [str(metric) for metric in self.scores["metric"].values]

    def to_markdown(self) -> str:
        """The table as markdown: a title line, one row per method, ``mean [low, high]`` cells
        (``n/a`` where no clip applies), the clips per column and the errors."""
        total = self.scores.sizes["clip"]
        lines = [f"{self.benchmark}: {total - len(self.errors)} clips scored, {len(self.errors)} errors; mean over "
                 f"clips [{self.confidence:.0%} bootstrap CI, {self.resamples} resamples of clips, seed {self.seed}]",
                 "", "| method | " + " | ".join(self.metrics) + " |", "|---" * (len(self.metrics) + 1) + "|"]
        for m, method in enumerate(self.methods):
            cells = [f"{self.mean[m, k]:.3f} [{self.low[m, k]:.3f}, {self.high[m, k]:.3f}]"
                     if np.isfinite(self.mean[m, k]) else "n/a" for k in range(len(self.metrics))]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "clips per column: " + ", ".join(
            f"{metric}={int(self.clips[:, k].max()) if self.clips.size else 0}" for k, metric in enumerate(self.metrics))]
        if self.errors:
            lines.append(f"errors ({len(self.errors)}): " + ", ".join(self.errors))
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One row per method and metric: ``method,metric,mean,ci_low,ci_high,clips`` (empty
        numbers where no clip applies)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["method", "metric", "mean", "ci_low", "ci_high", "clips"])
        for m, method in enumerate(self.methods):
            for k, metric in enumerate(self.metrics):
                numbers = [f"{value:.6f}" if np.isfinite(value) else "" for value in
                           (self.mean[m, k], self.low[m, k], self.high[m, k])]
                writer.writerow([method, metric, *numbers, int(self.clips[m, k])])
        return buffer.getvalue()


def aggregate(results: Sequence[dict[str, Any]], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
              confidence: float = 0.95, methods: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None) -> Table:
    """The :class:`Table` of ``results`` (result dicts, e.g.
    :func:`vidinterp.evaluation.runner.read_results`). ``metrics`` default to the benchmark
    task's metrics that occur, in the task's order."""
    if not results:
        raise ValueError("no result files to aggregate: run the evaluation first (results go to <out>/clips)")
    benchmarks = sorted({result["benchmark"] for result in results})
    if len(benchmarks) != 1:
        raise ValueError(f"result files of one benchmark expected, got {benchmarks}")
    if metrics is None:
        from vidinterp.evaluation.tasks import TASKS

        seen = {metric for result in results for per_method in result["scores"].values() for metric in per_method}
        order = list(getattr(TASKS.get(benchmarks[0]), "metrics", ()))
        metrics = [metric for metric in order if metric in seen] + sorted(seen - set(order))
    scores = per_clip_scores(results, methods, metrics)
    ok = scores["score"].values[scores["failed"].values == 0]
    with np.errstate(all="ignore"):
        clips = np.isfinite(ok).sum(axis=0)
        mean = np.divide(np.nansum(ok, axis=0), clips, out=np.full(clips.shape, np.nan), where=clips > 0)
    low, high = bootstrap_intervals(ok, resamples, seed, confidence)
    errors = [str(clip) for clip, failed in zip(scores["clip"].values, scores["failed"].values) if failed]
    return Table(benchmarks[0], scores, mean, low, high, clips, errors, resamples, seed, confidence)


def write_outputs(table: Table, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``scores.nc`` and ``scores.zarr`` into ``out_dir``
    (each atomically: :func:`vidinterp.trace_file.atomic_output`, ``atomic_folder`` for the zarr
    store); returns ``{kind: path}``."""
    from vidinterp.trace_file import atomic_folder, atomic_output

    out = Path(out_dir)
    paths = {"markdown": out / "table.md", "csv": out / "table.csv", "netcdf": out / "scores.nc",
             "zarr": out / "scores.zarr"}
    dataset = table.scores.assign_attrs(bootstrap_resamples=table.resamples, bootstrap_seed=table.seed,
                                        confidence=table.confidence)
    with atomic_output(paths["markdown"], what="writing the table") as temporary:
        temporary.write_text(table.to_markdown())
    with atomic_output(paths["csv"], what="writing the table") as temporary:
        temporary.write_text(table.to_csv())
    with atomic_output(paths["netcdf"], what="writing the per-clip scores") as temporary:
        dataset.to_netcdf(temporary, engine="h5netcdf")
    with atomic_folder(paths["zarr"], what="writing the per-clip scores") as temporary:
        dataset.chunk({"clip": 256}).to_zarr(temporary, mode="w", consolidated=True, zarr_format=2)
    return paths
