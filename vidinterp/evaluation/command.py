"""``vidinterp eval <benchmark> --data PATH --model SPEC --out DIR``: evaluate a model on a dataset.

Every process (one, or each rank of ``accelerate launch -m vidinterp eval ...`` / ``torchrun
--nproc_per_node N -m vidinterp eval ...``) loads the model once on its device, evaluates its
shard of the clips (:func:`vidinterp.evaluation.runner.evaluate`), waits for the others, and
rank 0 aggregates the result files of the run's clips into ``table.md``, ``table.csv``,
``scores.nc`` and ``scores.zarr`` in ``--out`` and prints the table. Rerunning the same command
resumes: clips with a result file are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_eval_parser", "eval_command"]


def add_eval_parser(commands) -> None:
    """The ``eval`` subcommand's arguments."""
    from vidinterp.evaluation.aggregate import DEFAULT_RESAMPLES
    from vidinterp.inputs import DTYPES, OFFLOAD_MODES
    from vidinterp.evaluation.tasks import DEFAULT_METHODS, TASKS

    evaluate = commands.add_parser("eval", help="evaluate map methods (or tracking) on a dataset; one result file "
                                                "per clip, resumable, shardable with accelerate/torchrun",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("benchmark", help=f"one of {', '.join(sorted(TASKS))}")
    evaluate.add_argument("--data", required=True, help="the dataset's folder, in its release layout (shapes: a "
                                                        "folder written by vidinterp.datasets.shapes.write_dataset)")
    evaluate.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                          help="an option of the dataset's reader, e.g. split=valid_u (MeViS), stride=2 (VSPW); "
                               "whole numbers are read as integers; repeatable")
    evaluate.add_argument("--model", default="zoo:shapes",
                          help="'zoo:<name>', 'tiny-<family>', or a local pipeline folder / cached model id "
                               "(default: %(default)s)")
    evaluate.add_argument("--methods", nargs="+",
                          help=f"map methods (default: {' '.join(DEFAULT_METHODS)}); any with the suffix +softmax; "
                               f"tracking benchmarks: track zero_motion")
    evaluate.add_argument("--out", required=True, help="output folder (result files in OUT/clips)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N clips (sorted ids)")
    evaluate.add_argument("--judge-from-env", action="store_true",
                          help="score MeViS with MLS through the OpenAI-compatible judge configured in the "
                               "environment (vidinterp.evaluation.judge); without it, mask-based stand-ins")
    evaluate.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                          help="bootstrap resamples of clips for the 95%% intervals (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the trace noise and the bootstrap (default: 0)")
    evaluate.add_argument("--steps", type=int, default=50, help="inference steps of the schedule (default: 50)")
    evaluate.add_argument("--renoise-step", type=int, help="schedule index to noise to (default: the family's)")
    evaluate.add_argument("--fit", choices=("crop", "pad"), default="crop",
                          help="how frames meet the model's aspect ratio (default: %(default)s)")
    evaluate.add_argument("--retry-errors", action="store_true", help="evaluate again clips with an error result")
    evaluate.add_argument("--dtype", choices=DTYPES, help="load a local pipeline in this dtype (e.g. bfloat16)")
    evaluate.add_argument("--device-map", help="diffusers device_map of a local pipeline (e.g. balanced)")
    evaluate.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                          help="CPU offload of a local pipeline: model (enable_model_cpu_offload) or sequential "
                               "(enable_sequential_cpu_offload) (default: %(default)s)")
    evaluate.add_argument("--cpu", action="store_true", help="run on the CPU even when an accelerator is visible")
    evaluate.add_argument("--memory-limit", help="memory each trace may use, e.g. 24GB, or 'off'")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _data_options(values: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> reader options (whole numbers as ``int``)."""
    options: dict[str, object] = {}
    for value in values:
        key, equals, text = value.partition("=")
        if not equals or not key:
            raise ValueError(f"--data-option takes KEY=VALUE, e.g. split=val; got {value!r}")
        options[key] = int(text) if text.lstrip("-").isdigit() else text
    return options


def _open_source(benchmark: str, data: str, options: dict[str, object]):
    """The dataset at ``data`` for ``benchmark`` (:func:`vidinterp.datasets.sources.open_dataset`)."""
    from vidinterp.datasets.sources import open_dataset

    if not Path(data).exists():
        raise FileNotFoundError(f"--data {data!r} does not exist; give the {benchmark} dataset's folder")
    return open_dataset(benchmark, data, **options)


def eval_command(args: argparse.Namespace) -> int:
    """Run ``vidinterp eval`` (module docstring); returns the exit status."""
    from vidinterp.evaluation.aggregate import aggregate, write_outputs
    from vidinterp.inputs import load_model
    from vidinterp.evaluation.runner import evaluate, read_result, result_path, selected_clips
    from vidinterp.evaluation.sharding import process_state
    from vidinterp.evaluation.tasks import TrackingTask, get_task

    _positive("--limit", args.limit)
    _positive("--bootstrap", args.bootstrap)
    _positive("--steps", args.steps)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder for the result files and tables")
    methods = get_task(args.benchmark).methods(args.methods)
    source = _open_source(args.benchmark, args.data, _data_options(args.data_option))
    clips = selected_clips(source, args.limit)
    judge = None
    if args.judge_from_env:
        from vidinterp.evaluation.judge import OpenAICompatibleJudge

        judge = OpenAICompatibleJudge.from_environment()
    state = process_state(cpu=args.cpu)
    pipe = load_model(args.model, state.device, dtype=args.dtype, device_map=args.device_map, offload=args.offload)
    trace_options = {"num_inference_steps": args.steps, "renoise_step": args.renoise_step, "seed": args.seed}
    if args.memory_limit is not None:
        trace_options["memory_limit"] = args.memory_limit
    if isinstance(get_task(args.benchmark), TrackingTask):  # track reads its own layer and step
        trace_options = {"seed": args.seed}
    summary = evaluate(args.benchmark, source, pipe, methods, out, limit=args.limit, judge=judge, fit=args.fit,
                       trace_options=trace_options, rank=state.rank, world_size=state.world_size,
                       retry_errors=args.retry_errors, progress=not args.no_progress, model_name=args.model)
    print(f"rank {state.rank}: {len(summary.done)} clips evaluated ({len(summary.errors)} errors), "
          f"{len(summary.skipped)} skipped (result files present)", flush=True)
    state.wait()
    if not state.is_main:
        return 0
    results = [read_result(result_path(out, clip)) for clip in clips if result_path(out, clip).exists()]
    table = aggregate(results, resamples=args.bootstrap, seed=args.seed, methods=methods)
    paths = write_outputs(table, out)
    print(table.to_markdown())
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
