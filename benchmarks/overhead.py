"""Overhead of tracing: wall time and peak memory of one traced transformer forward, as ratios to
the plain (untraced) forward of the same model on the same inputs.

What runs. One denoising step as ``vidinterp.trace`` runs it in renoising mode: the adapter's
:meth:`~vidinterp.adapter.Adapter.denoiser` (prompt encoded once, outside the timer; each call
scales the input, calls the transformer in the pipeline's cache context and combines the CFG
branches), at schedule index 30 of 50, prompt ``"a dog runs on the grass"``, concepts ``dog`` and
``grass``. Configurations:

* ``plain``: the stock transformer (the baseline of every ratio);
* ``sites``: the site graph installed, no concepts, no analyses (``vidinterp.hooked(pipe)``);
* ``concepts``: the concept stream alone (``vidinterp.hooked(pipe, concepts)``);
* one configuration per registered analysis that fits the model (``cross_attention``,
  ``concept_attention``, ``gramcol``, ``imap``, ``qk_matching``, ``separation``, ``prompt_mass``,
  ``correspondence``, ``lambda2``, ...), each alone;
* ``four_maps``: ``imap``, ``gramcol``, ``concept_attention`` and ``cross_attention`` together;
* ``default``: :func:`vidinterp.trace.default_analyses` ``(adapter, frames)``.

Analysis configurations are set up as ``vidinterp.trace`` sets them up (a
:class:`~vidinterp.context.TraceContext` bound to every analysis, a
:class:`~vidinterp.runtime.Runtime` with the concept stream of
:func:`~vidinterp.concept_stream.concept_state`, the adapter's ``cfg_batched``, installed with
:func:`vidinterp.install.installed`), fresh for every forward; setting up and installing are
outside the timer, as is ``Analysis.result()`` (timed separately as ``finalize_s``). Every traced
output is compared with the plain one bit for bit (``torch.equal``).

Models (CogVideoX-5B's classes, ``vidinterp.testing.tiny_pipeline("cogvideox", ...)``, float32,
CPU):

* ``tiny``: the tiny pipeline as built for the tests (2 layers x 2 heads x 16 dims), 3 latent
  frames x 4 x 6 patches + 16 prompt tokens;
* ``cogvideox``: the real ``CogVideoXTransformer3DModel`` with a narrow config (``--layers``,
  default 1, x 2 heads x 64 dims) at CogVideoX's token geometry: 13 latent frames x 30 x 45
  patches (49 frames at 480x720) = 17,550 visual + 226 prompt tokens.

Batch 1 (guidance 1) and CFG-batched batch 2 (guidance 6: the unconditional and conditional rows
in one call; the analyses read the conditional row). At batch 2 and CogVideoX geometry only
``plain``, ``sites``, ``concepts``, ``four_maps``, ``default`` and ``lambda2`` run: an analysis
reads only the conditional row, so its cost in seconds is batch 1's while the forward doubles.

Timing: ``--rounds`` interleaved rounds (default 3); a round runs every configuration of every
table once, in a shuffled order, each (size, batch) group starting with its ``plain`` forward;
a configuration's ratio in a round is its wall time over that round's ``plain`` time, and the
tables give the median over rounds with the min-max spread (also the ratio of process CPU time,
which is less sensitive to other loads on a shared machine). ``lambda2`` at CogVideoX geometry
runs in the first ``--slow-rounds`` rounds only (default 1; it is an order of magnitude slower
than the forward). One untimed warm-up forward per configuration precedes round one (only
``plain`` for groups whose forward takes over a second).

Peak memory: separate processes, forked from a ``multiprocessing`` forkserver that has imported
torch, diffusers and vidinterp and run nothing (so no OpenMP pool exists when a child forks): one
process per configuration of the large groups (a forward over a second: the CogVideoX geometry,
the largest scaling points), one process for all the configurations of the small groups. Each
builds the same model and inputs and runs the forward once under ``torch.profiler`` with
``profile_memory=True``. The peak is the largest total of bytes the CPU allocator handed out
during the forward, above what was allocated when it began (the profiler's allocation events and
their ``total_allocated``, inside a ``record_function`` range around the forward): the forward's
activations and whatever the trace allocates and keeps (analysis state), not the weights and
inputs made before it. This counts tensor memory only, exactly, without the noise of the C
allocator. A process that runs one configuration also reports its ``resource.getrusage`` peak
resident set size (``ru_maxrss``, whole process: interpreter, libraries, weights, inputs), whose
ratio is given too. ``lambda2`` at batch 2 and CogVideoX geometry gets no memory process (it reads
the conditional row only, as at batch 1, and each run takes a minute).

Threads: ``--threads`` (default 1). On a CPU shared with other jobs a descheduled OpenMP thread
stalls every parallel op (the tiny forward went from 10 ms to 370 ms with 2 threads under load).

Tables: (1) every configuration at both sizes and batches; (2) scaling over visual tokens
(1,056 to 17,550; batch 1; the 17,550 row is table 1's); (3) scaling over denoising steps
(1 to 8 steps of one run at 1,056 visual tokens, batch 1, ``plain`` vs ``default``, the latents
stepped by the scheduler between steps as ``vidinterp.trace`` does): per-step time ratio and
peak memory, which must not grow with the number of steps. Then the targets and whether each is
met, and (unless ``--no-profile``) a ``torch.profiler`` account of where the overhead of the
default analyses at CogVideoX geometry (batch 1) goes: time inside each analysis's ``observe``
and the concept stream (labelled with ``record_function``), and the aten operators whose self CPU
time grows most over the plain forward.

Usage::

    python benchmarks/overhead.py                 # full run (10 CPU-minutes; 23 minutes on 2 shared cores)
    python benchmarks/overhead.py --quick         # smoke configuration (about 20 CPU-seconds)
    python benchmarks/overhead.py --rounds 5 --out benchmarks/results/overhead_5rounds.json
    python benchmarks/overhead.py --summarize-only  # recompute targets and tables of a saved run

Writes JSON (``--out``, default ``benchmarks/results/overhead.json``) and the Markdown tables
next to it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import random
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

PROMPT = "a dog runs on the grass"
CONCEPTS = ["dog", "grass"]
FOUR_MAPS = ("imap", "gramcol", "concept_attention", "cross_attention")
RENOISE_STEP, NUM_INFERENCE_STEPS = 30, 50
CFG_GUIDANCE = 6.0
#: configurations run at batch 2 at CogVideoX geometry (see the module docstring)
BATCH2_CONFIGS = ("sites", "concepts", "four_maps", "default", "lambda2")
#: configurations an order of magnitude slower than the forward at large sizes
SLOW_CONFIGS = ("lambda2",)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"

#: thresholds of the targets (ratios to the plain forward; see :func:`targets`)
TARGETS = {
    "time_cogvideox": 1.02,
    "time_1k": 1.10,
    "memory": 1.02,
    "lambda2": 2.0,
}


@dataclass(frozen=True)
class Size:
    """A model and token geometry.

    Attributes:
        name: row label.
        model: keyword arguments of ``tiny_pipeline("cogvideox", ...)`` as sorted items.
        grid: (latent frames, patch rows, patch columns).
    """

    name: str
    model: tuple[tuple[str, Any], ...]
    grid: tuple[int, int, int]

    @property
    def visual_tokens(self) -> int:
        return math.prod(self.grid)


@dataclass
class Group:
    """Configurations timed together against one ``plain`` baseline."""

    table: str  # "main", "scaling" or "steps"
    size: Size
    batch: int
    steps: int
    configs: list[str]


@dataclass
class Measurement:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    bitwise_equal: bool = True
    analysed: bool = True
    finalize_s: list[float] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------- models and inputs
def cogvideox_model(layers: int, prompt_tokens: int = 226) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(variant="5b", num_layers=layers, num_attention_heads=2, attention_head_dim=64,
                             max_text_seq_length=prompt_tokens, sample_frames=49, sample_height=60,
                             sample_width=90).items()))


_MODELS: dict[tuple, Any] = {}


def model_for(size: Size):
    """``(pipe, adapter)`` of ``size`` (cached per model)."""
    if size.model not in _MODELS:
        from vidinterp.registry import adapter_for
        from vidinterp.testing import tiny_pipeline

        pipe = tiny_pipeline("cogvideox", **dict(size.model))
        pipe.set_progress_bar_config(disable=True)
        _MODELS[size.model] = pipe, adapter_for(pipe)
    return _MODELS[size.model]


class Bench:
    """Model, inputs and the denoising call of one (size, batch)."""

    def __init__(self, size: Size, batch: int) -> None:
        self.size, self.batch = size, batch
        self.pipe, self.adapter = model_for(size)
        frames, rows, cols = size.grid
        patch = int(self.adapter.transformer.config.patch_size)
        channels = int(self.adapter.transformer.config.in_channels)
        generator = torch.Generator().manual_seed(0)
        self.latents = torch.randn(1, frames, channels, patch * rows, patch * cols, generator=generator)
        self.frames = frames
        self.pixel_frames = (frames - 1) * self.adapter.temporal_compression + 1
        self.guidance = CFG_GUIDANCE if batch == 2 else 1.0
        self.timesteps = self.adapter.timesteps(NUM_INFERENCE_STEPS)
        self.denoise = self.adapter.denoiser(PROMPT, self.latents, self.guidance, None)
        self.concept_tokens = self.adapter.encode_concepts(CONCEPTS, "first")

    # ------------------------------------------------------------------ configurations
    def analyses(self, config: str) -> list:
        from vidinterp.registry import analysis_classes
        from vidinterp.trace import default_analyses

        if config == "default":
            return default_analyses(self.adapter, self.frames)
        names = FOUR_MAPS if config == "four_maps" else (config,)
        return [analysis_classes()[name]() for name in names]

    def runtime(self, analyses: list, steps: list[int]):
        """The runtime of a trace of ``analyses`` over ``steps``, set up as ``vidinterp.trace``
        sets it up."""
        from vidinterp.arguments import check_analyses_fit
        from vidinterp.trace import analysis_runtime

        check_analyses_fit(analyses, self.adapter, self.frames)
        runtime = analysis_runtime(self.adapter, analyses, list(CONCEPTS), self.concept_tokens, prompt=PROMPT,
                                   timesteps=self.timesteps, steps=steps, guidance=self.guidance)
        runtime.pixel_frames = self.pixel_frames
        return runtime

    @contextmanager
    def configured(self, config: str, steps: list[int]) -> Iterator[Any]:
        """Install ``config`` on the model; yields the runtime (``None`` for plain/sites/concepts)."""
        import vidinterp
        from vidinterp.install import installed

        if config == "plain":
            yield None
        elif config == "sites":
            with vidinterp.hooked(self.pipe):
                yield None
        elif config == "concepts":
            with vidinterp.hooked(self.pipe, CONCEPTS):
                yield None
        else:
            runtime = self.runtime(self.analyses(config), steps)
            with installed(self.adapter, runtime):
                yield runtime

    def run(self, runtime, steps: list[int]) -> torch.Tensor:
        """The timed part: ``len(steps)`` denoising steps from the same latents (the scheduler
        steps the latents between them, as ``vidinterp.trace`` does); returns the last output
        and the stepped latents, concatenated."""
        latents, output = self.latents, None
        with torch.no_grad():
            for position, step in enumerate(steps):
                timestep = self.timesteps[step]
                if runtime is not None:
                    runtime.set_step(step, timestep)
                output = self.denoise(latents, timestep)
                if position + 1 < len(steps):
                    latents = self.adapter.scheduler_step(output, timestep, latents).to(latents.dtype)
        return torch.cat([output.flatten(), latents.flatten()])


def analysed_steps(count: int) -> list[int]:
    return list(range(RENOISE_STEP, RENOISE_STEP + count))


# ---------------------------------------------------------------------------- plan
def plan(quick: bool, layers: int) -> tuple[list[Group], dict[str, Size]]:
    from vidinterp.registry import analysis_classes

    tiny = Size("tiny", (), (3, 4, 6))
    if quick:
        cog = Size("cogvideox", cogvideox_model(1), (2, 6, 8))
        scale_grids = [(2, 4, 6)]
        step_counts = [1, 2]
    else:
        cog = Size("cogvideox", cogvideox_model(layers), (13, 30, 45))
        scale_grids = [(2, 22, 24), (2, 30, 45), (4, 30, 45), (7, 30, 45)]
        step_counts = [1, 2, 4, 8]
    scales = [Size(f"scale_{math.prod(grid)}", cog.model, grid) for grid in scale_grids]

    singles, probe = [], Bench(tiny, 1)
    for name in analysis_classes():
        try:
            probe.runtime(probe.analyses(name), [RENOISE_STEP])
            singles.append(name)
        except ValueError:  # reads a site kind CogVideoX lacks, or needs more frames
            pass
    everything = ["sites", "concepts", *singles, "four_maps", "default"]
    groups = [Group("main", tiny, 1, 1, everything), Group("main", tiny, 2, 1, everything),
              Group("main", cog, 1, 1, everything),
              Group("main", cog, 2, 1, everything if quick else [c for c in everything if c in BATCH2_CONFIGS])]
    for size in scales:
        groups.append(Group("scaling", size, 1, 1, ["sites", "concepts", "four_maps", "default"]))
    step_size = scales[0]
    for count in step_counts:
        groups.append(Group("steps", step_size, 1, count, ["default"]))
    return groups, {"tiny": tiny, "cogvideox": cog, "steps": step_size}


def group_key(group: Group) -> tuple:
    return (group.table, group.size.name, group.batch, group.steps)


# ---------------------------------------------------------------------------- timing
def time_one(bench: Bench, config: str, steps: list[int], reference: torch.Tensor | None,
             measurement: Measurement, round_index: int | None) -> torch.Tensor:
    with bench.configured(config, steps) as runtime:
        wall, cpu = time.perf_counter(), time.process_time()
        output = bench.run(runtime, steps)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if runtime is not None and runtime.analyses:
        start = time.perf_counter()
        results = [analysis.result() for analysis in runtime.analyses]
        measurement.finalize_s.append(time.perf_counter() - start)
        measurement.analysed &= runtime.visited_steps == steps and all(len(r.data_vars) for r in results)
    if reference is not None:
        measurement.bitwise_equal &= bool(torch.equal(output, reference))
    if round_index is not None:
        measurement.wall_s.append(wall)
        measurement.cpu_s.append(cpu)
        measurement.rounds.append(round_index)
    return output


def run_timing(groups: list[Group], rounds: int, slow_rounds: int, quick: bool,
               log=print) -> tuple[dict[tuple, dict[str, Measurement]], set[tuple]]:
    """Interleaved rounds of every configuration; also the keys of the large groups (a
    forward of over a second)."""
    benches: dict[tuple, Bench] = {}
    references: dict[tuple, torch.Tensor] = {}
    measured: dict[tuple, dict[str, Measurement]] = {}
    slow_groups: set[tuple] = set()
    for group in groups:
        key = group_key(group)
        bench_key = (group.size.name, group.batch)
        if bench_key not in benches:
            benches[bench_key] = Bench(group.size, group.batch)
        bench, steps = benches[bench_key], analysed_steps(group.steps)
        measured[key] = {config: Measurement() for config in ["plain", *group.configs]}
        start = time.perf_counter()  # warm-up
        references[key] = time_one(bench, "plain", steps, None, measured[key]["plain"], None)
        if time.perf_counter() - start < 1.0:
            for config in group.configs:
                try:
                    time_one(bench, config, steps, references[key], measured[key][config], None)
                except Exception as error:  # noqa: BLE001 - recorded, the benchmark goes on
                    measured[key][config].error = f"{type(error).__name__}: {error}"
        else:
            slow_groups.add(key)
    shuffle = random.Random(0)
    for round_index in range(rounds):
        started = time.perf_counter()
        for group in groups:
            key = group_key(group)
            bench, steps = benches[(group.size.name, group.batch)], analysed_steps(group.steps)
            time_one(bench, "plain", steps, references[key], measured[key]["plain"], round_index)
            order = list(group.configs)
            shuffle.shuffle(order)
            for config in order:
                measurement = measured[key][config]
                if measurement.error or (not quick and key in slow_groups and config in SLOW_CONFIGS
                                         and round_index >= slow_rounds):
                    continue
                try:
                    time_one(bench, config, steps, references[key], measurement, round_index)
                except Exception as error:  # noqa: BLE001
                    measurement.error = f"{type(error).__name__}: {error}"
        log(f"round {round_index + 1}/{rounds}: {time.perf_counter() - started:.1f} s", flush=True)
    return measured, slow_groups


# ---------------------------------------------------------------------------- memory
def _profiled_events(profiler) -> tuple[list[tuple[int, int, int]], dict[str, tuple[int, int]]]:
    """``(time ns, bytes, allocator total after)`` of every CPU allocation and free the profiler
    saw, in time order (``total_allocated`` counts from the profiler's start), and the
    ``(start, end)`` of every ``record_function`` range named ``overhead.window.*``."""
    from torch._C._profiler import _EventType

    allocations, windows = [], {}
    stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        elif node.name.startswith("overhead.window."):
            windows[node.name] = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    return sorted(allocations), windows


def _window_peak(allocations: list[tuple[int, int, int]], start_ns: int, end_ns: int) -> int:
    """Largest allocator total inside ``[start_ns, end_ns]`` above the total when it began."""
    inside = [(size, total) for when, size, total in allocations if start_ns <= when <= end_ns]
    if not inside:
        return 0
    base = inside[0][1] - inside[0][0]
    return max(0, max(total for _, total in inside) - base)


def memory_child(tasks: list[dict]) -> list[dict]:
    """Run each task's configuration once in this process, under one ``torch.profiler`` session;
    the peak memory of each run (and the process's ``ru_maxrss`` before and after it)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(tasks[0]["threads"])
    benches: dict[tuple, Bench] = {}
    results = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        for task in tasks:
            size = Size(task["name"], tuple(tuple(item) for item in task["model"]), tuple(task["grid"]))
            if (size, task["batch"]) not in benches:
                benches[(size, task["batch"])] = Bench(size, task["batch"])
            bench, steps = benches[(size, task["batch"])], analysed_steps(task["steps"])
            with bench.configured(task["config"], steps) as runtime:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                with record_function(f"overhead.window.{len(results)}"):
                    bench.run(runtime, steps)
                after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results.append({"maxrss_kib": after, "maxrss_delta_kib": after - before})
    allocations, windows = _profiled_events(profiler)
    for index, result in enumerate(results):
        result["peak_bytes"] = _window_peak(allocations, *windows[f"overhead.window.{index}"])
    return results


def start_forkserver():
    """The forkserver the memory processes fork from (imports torch, diffusers, vidinterp once;
    runs nothing, so no OpenMP pool exists when a child forks). Started early: it imports while
    the timing warms up."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "diffusers", "vidinterp", "vidinterp.testing", "vidinterp.adapters",
                                    "vidinterp.analyses", "torch.profiler"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


def run_memory(groups: list[Group], measured: dict, large: set[tuple], threads: int, context,
               log=print) -> dict[tuple, dict[str, dict]]:
    """Peak memory of every configuration: one process per configuration of a large group (a
    forward over a second), one process for all the configurations of the small groups."""
    memory: dict[tuple, dict[str, dict]] = {group_key(group): {} for group in groups}
    batches: list[list[tuple[tuple, str, dict]]] = [[]]
    for group in groups:
        key = group_key(group)
        for config in ["plain", *group.configs]:
            if measured[key][config].error or (key in large and config in SLOW_CONFIGS and group.batch > 1):
                continue  # lambda2 reads the conditional row only: batch 1's process stands for it
            task = {"name": group.size.name, "model": [list(item) for item in group.size.model],
                    "grid": list(group.size.grid), "batch": group.batch, "steps": group.steps,
                    "config": config, "threads": threads}
            if key in large:
                batches.append([(key, config, task)])
            else:
                batches[0].append((key, config, task))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for batch in batches:
            if not batch:
                continue
            try:
                results = pool.submit(memory_child, [task for _, _, task in batch]).result()
            except Exception as error:  # noqa: BLE001 - recorded, the benchmark goes on
                results = [{"error": f"{type(error).__name__}: {error}"}] * len(batch)
            isolated = len(batch) == 1 and batch[0][0] in large
            for (key, config, _), result in zip(batch, results):
                if not isolated:  # ru_maxrss is a process's lifetime peak: meaningless when shared
                    result = {name: value for name, value in result.items() if not name.startswith("maxrss")}
                memory[key][config] = result
    log(f"memory: {time.perf_counter() - started:.1f} s in {sum(1 for b in batches if b)} processes", flush=True)
    return memory


# ---------------------------------------------------------------------------- profile
def _labelled(function, label: str):
    from torch.profiler import record_function

    def wrapper(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    return wrapper


def run_profile(size: Size, batch: int, top: int = 10) -> dict:
    """Where the overhead of the default analyses goes (one traced vs one plain forward)."""
    from torch.profiler import ProfilerActivity, profile

    bench = Bench(size, batch)
    steps = analysed_steps(1)
    profiles = {}
    for config in ("plain", "default"):
        with bench.configured(config, steps) as runtime:
            if runtime is not None:
                for analysis in runtime.analyses:
                    analysis.observe = _labelled(analysis.observe, f"vidinterp.analysis.{analysis.name}")
                stream = runtime.concepts
                for method in ("before_block", "attend", "after_block"):
                    setattr(stream, method, _labelled(getattr(stream, method), f"vidinterp.concept_stream.{method}"))
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                start = time.perf_counter()
                bench.run(runtime, steps)
                wall = time.perf_counter() - start
        profiles[config] = (wall, {event.key: event for event in profiler.key_averages()})
    plain_wall, plain = profiles["plain"]
    traced_wall, traced = profiles["default"]
    regions = {key: event.cpu_time_total / 1e3 for key, event in traced.items() if key.startswith("vidinterp.")}
    operators = []
    for key, event in traced.items():
        if key.startswith("vidinterp.") or key.startswith("[") or key == "ProfilerStep*":
            continue
        base = plain.get(key)
        extra = event.self_cpu_time_total - (base.self_cpu_time_total if base else 0.0)
        operators.append({"operator": key, "extra_self_ms": extra / 1e3, "traced_calls": event.count,
                          "plain_calls": base.count if base else 0})
    operators.sort(key=lambda row: -row["extra_self_ms"])
    return {"size": size.name, "batch": batch, "config": "default",
            "plain_wall_s": plain_wall, "traced_wall_s": traced_wall,
            "regions_ms": dict(sorted(regions.items(), key=lambda item: -item[1])),
            "top_operators": operators[:top]}


# ---------------------------------------------------------------------------- summary
def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(groups: list[Group], measured: dict, memory: dict) -> list[dict]:
    rows = []
    for group in groups:
        key = group_key(group)
        plain = measured[key]["plain"]
        plain_wall = dict(zip(plain.rounds, plain.wall_s))
        plain_cpu = dict(zip(plain.rounds, plain.cpu_s))
        plain_memory = memory.get(key, {}).get("plain", {})
        for config in ["plain", *group.configs]:
            m = measured[key][config]
            wall = [w / plain_wall[r] for w, r in zip(m.wall_s, m.rounds)]
            cpu = [c / plain_cpu[r] for c, r in zip(m.cpu_s, m.rounds)]
            mem = memory.get(key, {}).get(config, {})
            row = {
                "table": group.table, "size": group.size.name, "batch": group.batch, "steps": group.steps,
                "config": config, "visual_tokens": group.size.visual_tokens, "grid": list(group.size.grid),
                "wall_s": spread(m.wall_s), "cpu_s": spread(m.cpu_s), "wall_ratio": spread(wall),
                "cpu_ratio": spread(cpu),
                "rounds": len(m.wall_s), "bitwise_equal": m.bitwise_equal, "analysed": m.analysed,
                "finalize_s": spread(m.finalize_s) if m.finalize_s else None, "error": m.error or mem.get("error"),
                "peak_bytes": mem.get("peak_bytes"), "maxrss_kib": mem.get("maxrss_kib"),
                "memory_ratio": _ratio(mem.get("peak_bytes"), plain_memory.get("peak_bytes")),
                "maxrss_ratio": _ratio(mem.get("maxrss_kib"), plain_memory.get("maxrss_kib")),
            }
            rows.append(row)
    return rows


def _ratio(value, base):
    if value is None or not base:
        return None
    return value / base


def find(rows: list[dict], **where) -> dict | None:
    for row in rows:
        if all(row[key] == value for key, value in where.items()):
            return row
    return None


def targets(rows: list[dict], cog: str, small: str) -> list[dict]:
    """Every target with its value and verdict: time ratios are judged on the wall-time median
    (``met``) and, for comparison, on the CPU-time median (``cpu_met``)."""
    out = []

    def add(target: str, threshold: float, row: dict | None, metric: str, label: str) -> None:
        def value_of(name):
            if row is None or row.get(name) is None:
                return None
            return row[name]["median"] if isinstance(row[name], dict) else row[name]

        value = value_of(metric)
        entry = {"target": target, "where": label, "metric": metric, "threshold": threshold, "value": value,
                 "met": value is not None and math.isfinite(value) and value <= threshold}
        if metric == "wall_ratio":
            cpu = value_of("cpu_ratio")
            entry.update(cpu_value=cpu, cpu_met=cpu is not None and math.isfinite(cpu) and cpu <= threshold)
        out.append(entry)

    tokens = next((row["visual_tokens"] for row in rows if row["size"] == small), None)
    for config in ("four_maps", "default"):
        for batch in (1, 2):
            add(f"{config} time <= {TARGETS['time_cogvideox']}x", TARGETS["time_cogvideox"],
                find(rows, table="main", size=cog, batch=batch, config=config), "wall_ratio",
                f"CogVideoX geometry, batch {batch}")
        add(f"{config} time <= {TARGETS['time_1k']}x", TARGETS["time_1k"],
            find(rows, table="scaling", size=small, batch=1, config=config), "wall_ratio",
            f"{tokens} visual tokens, batch 1")
    for config in ("four_maps", "default"):
        for batch in (1, 2):
            add(f"{config} peak memory <= {TARGETS['memory']}x", TARGETS["memory"],
                find(rows, table="main", size=cog, batch=batch, config=config), "memory_ratio",
                f"CogVideoX geometry, batch {batch}")
    # The trace's memory must not grow with steps: its peak ratio to plain after the most steps
    # over that ratio after one step (plain's own peak grows once the scheduler steps latents).
    steps = sorted(row["steps"] for row in rows if row["table"] == "steps" and row["config"] == "default")
    first = find(rows, table="steps", steps=steps[0], config="default") if steps else None
    last = find(rows, table="steps", steps=steps[-1], config="default") if steps else None
    growth = None
    if first and last and first.get("memory_ratio") and last.get("memory_ratio"):
        growth = last["memory_ratio"] / first["memory_ratio"]
    out.append({"target": f"trace memory does not grow with steps (<= {TARGETS['memory']}x)", "metric": "memory_ratio",
                "where": f"default, peak ratio at {steps[-1] if steps else '?'} over 1 step, {tokens} visual tokens",
                "threshold": TARGETS["memory"], "value": growth,
                "met": growth is not None and growth <= TARGETS["memory"]})
    for batch in (1, 2):
        add(f"lambda2 time <= {TARGETS['lambda2']}x one forward", TARGETS["lambda2"],
            find(rows, table="main", size=cog, batch=batch, config="lambda2"), "wall_ratio",
            f"CogVideoX geometry, batch {batch}")
    return out


# ---------------------------------------------------------------------------- report
def _fmt_ratio(stats: dict | None) -> str:
    if not stats or stats.get("median") is None or not math.isfinite(stats["median"]):
        return "n/a"
    if stats["min"] == stats["max"]:
        return f"{stats['median']:.3f}"
    return f"{stats['median']:.3f} [{stats['min']:.3f}-{stats['max']:.3f}]"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def markdown(result: dict) -> str:
    rows, lines = result["rows"], []
    meta = result["meta"]
    lines.append(f"Command: `{meta['command']}` ({meta['date']}; torch {meta['torch']}, {meta['threads']} threads, "
                 f"{meta['rounds']} rounds{', QUICK' if meta['quick'] else ''}).")
    lines.append("")
    lines.append("Ratios to the plain forward: wall time median [min-max over rounds], CPU time median; peak "
                 "memory: profiler allocation peak of the forward (activations + trace state) and whole-process "
                 "ru_maxrss. `equal`: traced output bitwise equal to plain.")
    for table, title in (("main", "Every configuration"), ("scaling", "Scaling over visual tokens (batch 1)"),
                         ("steps", "Scaling over denoising steps (batch 1)")):
        lines += ["", f"### {title}", ""]
        if table == "steps":
            lines.append("| steps | config | visual tokens | wall/step (s) | wall ratio | cpu ratio | peak MiB | "
                         "peak ratio | maxrss ratio | equal |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|")
        else:
            lines.append("| size | batch | config | visual tokens | wall (s) | wall ratio | cpu ratio | peak MiB | "
                         "peak ratio | maxrss ratio | equal |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        selected = [row for row in rows if row["table"] == table]
        if table == "scaling":  # the CogVideoX-geometry batch-1 rows close the table
            cog = result["meta"]["cogvideox_size"]
            selected += [row for row in rows if row["table"] == "main" and row["size"] == cog and row["batch"] == 1
                         and row["config"] in ("plain", "sites", "concepts", "four_maps", "default")]
        for row in selected:
            wall = row["wall_s"]["median"]
            if row["error"]:
                cells = ["error: " + row["error"][:80]] + [""] * 6
            else:
                cells = [_fmt(wall / row["steps"] if table == "steps" else wall), _fmt_ratio(row["wall_ratio"]),
                         _fmt(row["cpu_ratio"]["median"]), _mib(row["peak_bytes"]), _fmt(row["memory_ratio"]),
                         _fmt(row["maxrss_ratio"]), "yes" if row["bitwise_equal"] else "**NO**"]
            if table == "steps":
                lead = f"| {row['steps']} | {row['config']} | {row['visual_tokens']} | "
                lines.append(lead + " | ".join(cells) + " |")
            else:
                lines.append(f"| {row['size']} | {row['batch']} | {row['config']} | {row['visual_tokens']} | "
                             + " | ".join(cells) + " |")
    lines += ["", "### Targets", "", "Time targets are judged on the wall-time median; the CPU-time median's verdict "
              "is given beside it.", "", "| target | where | value | met | CPU-time value | met on CPU time |",
              "|---|---|---|---|---|---|"]
    for target in result["targets"]:
        cpu = (f"{_fmt(target['cpu_value'])} | {'yes' if target['cpu_met'] else '**no**'}"
               if "cpu_value" in target else " | ")
        verdict = "not measured" if target["value"] is None else "yes" if target["met"] else "**no**"
        lines.append(f"| {target['target']} | {target['where']} | {_fmt(target['value'])} | {verdict} | {cpu} |")
    profile = result.get("profile")
    if profile:
        lines += ["", f"### Profile: default analyses, {profile['size']}, batch {profile['batch']}", "",
                  f"Under the profiler: plain {profile['plain_wall_s']:.2f} s, "
                  f"traced {profile['traced_wall_s']:.2f} s. "
                  "Regions: time inside each analysis's `observe` and the concept stream's steps (inclusive), "
                  "and as a share of the plain forward under the profiler.",
                  "", "| region | ms | share of plain forward |", "|---|---|---|"]
        for name, value in [*profile["regions_ms"].items(), ("all regions", sum(profile["regions_ms"].values()))]:
            lines.append(f"| {name} | {value:.1f} | {100 * value / 1e3 / profile['plain_wall_s']:.2f}% |")
        lines += ["", "| operator | extra self CPU ms | calls traced / plain |", "|---|---|---|"]
        for op in profile["top_operators"]:
            lines.append(f"| {op['operator']} | {op['extra_self_ms']:.1f} | "
                         f"{op['traced_calls']} / {op['plain_calls']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration: small sizes, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3; quick 2)")
    parser.add_argument("--slow-rounds", type=int, default=1, help="rounds of lambda2 at CogVideoX geometry")
    parser.add_argument("--layers", type=int, default=1, help="transformer blocks of the CogVideoX-geometry model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine a descheduled OpenMP thread stalls "
                             "every parallel op, which swamps small forwards)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler account")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (Markdown next to it)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="measure nothing: recompute the targets and tables of the JSON at --out")
    args = parser.parse_args(argv)
    if args.summarize_only:
        result = json.loads(args.out.read_text())
        result["targets"] = targets(result["rows"], result["meta"]["cogvideox_size"], result["meta"]["steps_size"])
        return _write(result, args.out)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    context = None if args.no_memory else start_forkserver()
    groups, sizes = plan(args.quick, args.layers)
    measured, large = run_timing(groups, rounds, args.slow_rounds, args.quick)
    memory = {} if args.no_memory else run_memory(groups, measured, large, args.threads, context)
    started_profile = time.perf_counter()
    profile = None if args.no_profile else run_profile(sizes["cogvideox"], 1)
    print(f"profile: {time.perf_counter() - started_profile:.1f} s", flush=True)
    rows = summarise(groups, measured, memory)
    result = {
        "meta": {
            "command": "python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": args.threads, "rounds": rounds, "slow_rounds": args.slow_rounds, "quick": args.quick,
            "layers": dict(sizes["cogvideox"].model).get("num_layers"), "prompt": PROMPT, "concepts": CONCEPTS,
            "renoise_step": RENOISE_STEP, "num_inference_steps": NUM_INFERENCE_STEPS, "cfg_guidance": CFG_GUIDANCE,
            "cogvideox_size": sizes["cogvideox"].name, "steps_size": sizes["steps"].name,
            "sizes": {name: asdict(size) for name, size in sizes.items()},
            "memory_method": "torch.profiler allocation events (CPU allocator total above its value at the "
                             "forward's start), one forkserver child process per configuration; plus ru_maxrss",
        },
        "rows": rows,
        "targets": targets(rows, sizes["cogvideox"].name, sizes["steps"].name),
        "profile": profile,
    }
    result["meta"]["elapsed_s"] = time.perf_counter() - started
    return _write(result, args.out)


def _write(result: dict, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')} (run: {result['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
