"""Command line: ``vidinterp run`` traces a video and writes an interactive HTML view and a
netCDF file. With no arguments it runs on the bundled default: the trained shapes model of
``vidinterp.zoo`` (``zoo:shapes``) renoising its bundled held-out clip (an mp4 with exact
masks). A zoo model renoises its own clip unless ``--video`` is given; a tiny random-weights
pipeline (``--model tiny-<family>``) renoises a synthetic shapes clip at its geometry."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_METHODS = ("imap", "gramcol", "concept_attention", "cross_attention")
DEFAULT_MODEL = "zoo:shapes"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidinterp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="trace a video (default: the bundled demo) and write HTML + netCDF")
    run.add_argument("--model", default=DEFAULT_MODEL,
                     help="'zoo:<name>' for a trained model of vidinterp.zoo (default: %(default)s); 'tiny-<family>' for an "
                          "offline tiny pipeline with random weights; a local pipeline directory or cached model id")
    run.add_argument("--video", help="video file to renoise (default: a zoo model's bundled clip; for other models "
                                     "a synthetic shapes clip at the model's geometry)")
    run.add_argument("--prompt", help="prompt / caption (default: the demo clip's caption)")
    run.add_argument("--concepts", nargs="+", help="concept words (default: the demo clip's concepts)")
    run.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help=f"analyses to run (default: {' '.join(DEFAULT_METHODS)})")
    run.add_argument("--steps", type=int, default=50, help="inference steps of the schedule")
    run.add_argument("--renoise-step", type=int, help="schedule index to noise to (default: the family's reference)")
    run.add_argument("--resample", action="store_true", help="resample the video to the model's native geometry")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="vidinterp-out", help="output directory")
    return parser


def _pipeline(model: str):
    from vidinterp.inputs import load_pipeline

    if model.startswith("tiny-"):
        from vidinterp.testing import tiny_pipeline

        return tiny_pipeline(model.removeprefix("tiny-"))
    if model.startswith("zoo:"):
        import vidinterp

        return vidinterp.zoo.load(model.removeprefix("zoo:"))
    return load_pipeline(model)


def _demo_clip(model: str, geometry: tuple[int, int, int], seed: int):
    """A zoo model's bundled clip, or a two-object shapes clip at ``geometry`` (frames, H, W)."""
    from vidinterp.datasets.shapes import ShapesConfig, generate_clip, load_clip

    if model.startswith("zoo:"):
        import vidinterp

        return load_clip(vidinterp.zoo.demo_clip(model.removeprefix("zoo:")))
    frames, height, width = geometry
    config = ShapesConfig(num_frames=frames, height=height, width=width, num_objects=(2, 2),
                          size_range=(max(4, min(height, width) // 4), max(5, min(height, width) // 3)))
    return generate_clip(config, seed=seed)


def run(args: argparse.Namespace) -> int:
    import vidinterp
    from vidinterp.registry import adapter_for, analysis_classes

    started = time.perf_counter()
    try:
        pipe = _pipeline(args.model)
    except (FileNotFoundError, ValueError) as error:
        print(f"cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 2
    adapter = adapter_for(pipe)
    classes = analysis_classes()
    unknown = [name for name in args.methods if name not in classes]
    if unknown:
        print(f"unknown methods {unknown}; available: {sorted(classes)}", file=sys.stderr)
        return 2
    if args.video is None:
        clip = _demo_clip(args.model, adapter.default_geometry(), args.seed)
        video, prompt, concepts = clip.frames, args.prompt or clip.caption, args.concepts or clip.concepts
    else:
        if not args.concepts:
            print("--concepts is required with --video", file=sys.stderr)
            return 2
        video, prompt, concepts = args.video, args.prompt or "", args.concepts
    geometry = dict(zip(("num_frames", "height", "width"), adapter.default_geometry())) if args.resample else {}
    trace = vidinterp.trace(
        pipe, video=video, prompt=prompt, concepts=concepts, analyses=[classes[name]() for name in args.methods],
        num_inference_steps=args.steps, renoise_step=args.renoise_step, resample=args.resample, seed=args.seed,
        **geometry,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    netcdf = trace.save(out / "trace.nc")
    html = out / "trace.html"
    trace.plot().write_html(html, include_plotlyjs=True)
    print(trace)
    print(f"prompt: {prompt!r}; concepts: {concepts}")
    print(f"wrote {html} and {netcdf} in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
