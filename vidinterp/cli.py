"""Command line: ``vidinterp run`` traces a video and writes an interactive HTML view and a
netCDF file. With no arguments it runs on the bundled default: the trained shapes model of
``vidinterp.zoo`` (``zoo:shapes``) renoising its bundled held-out clip (an mp4 with exact
masks). A zoo model renoises its own clip unless ``--video`` is given; a tiny random-weights
pipeline (``--model tiny-<family>``) renoises a synthetic shapes clip at its geometry (one
frame for image models). ``--video`` takes any clip (a video file, an animated GIF/WebP, a
folder of images) and fits it to the model's geometry (``--resample``/``--no-resample``,
``--fit crop|pad``, ``--num-frames``/``--height``/``--width``; see :mod:`vidinterp.video`).
Models whose concepts must be words of the prompt (cross-attention: Wan, LTX-Video) get a prompt
that holds the concepts when ``--prompt`` is not given; the command says so in one line. Without
``--methods`` the default methods the model's sites allow run. A user error is one line on
stderr and exit status 2 (``--debug`` shows the traceback); notes are one line on stderr,
``vidinterp: note: ...``. ``vidinterp track`` tracks points (:func:`vidinterp.track`) and writes
``tracks.html`` (:func:`vidinterp.plotting.plot_tracks`) and ``tracks.nc``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
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
    run.add_argument("--video", help="clip to renoise: a video file (mp4, mov, avi, mkv, webm, ...), an animated GIF "
                                     "or WebP, or a folder of images (default: a zoo model's bundled clip; for other "
                                     "models a synthetic shapes clip at the model's geometry)")
    run.add_argument("--prompt", help="prompt / caption (default: the demo clip's caption; with --video, empty, or "
                                      "the concepts for models that read concepts from the prompt's words)")
    run.add_argument("--concepts", nargs="+", help="concept words (default: the demo clip's concepts)")
    run.add_argument("--methods", nargs="+", help=f"analyses to run (default: those of {' '.join(DEFAULT_METHODS)} that "
                                                  f"the model's sites allow)")
    run.add_argument("--steps", type=int, default=50, help="inference steps of the schedule")
    run.add_argument("--renoise-step", type=int, help="schedule index to noise to (default: the family's reference)")
    run.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                     help="--resample: fit the clip to the model's geometry without a note; --no-resample: use it as "
                          "it is or fail (default: fit it, with a one-line note, only when the model does not take it "
                          "as it is)")
    run.add_argument("--fit", choices=("crop", "pad"), default="crop",
                     help="how a clip's aspect ratio meets the model's: centre crop or pad with black (default: "
                          "%(default)s)")
    run.add_argument("--num-frames", type=int, help="frames to run at (default: the model's native number)")
    run.add_argument("--height", type=int, help="pixel height to run at (default: the model's native height)")
    run.add_argument("--width", type=int, help="pixel width to run at (default: the model's native width)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--memory-limit", help="memory the run may use, e.g. 24GB, or 'off' (default: the device's free "
                                            "memory; see vidinterp.memory)")
    run.add_argument("--out", default="vidinterp-out", help="output directory")
    run.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    _add_track_parser(commands)
    _add_eval_parser(commands)
    return parser


def _add_eval_parser(commands) -> None:
    """``vidinterp eval``: a benchmark over a dataset (:mod:`vidinterp.evaluation.command`)."""
    from vidinterp.evaluation.command import add_eval_parser

    add_eval_parser(commands)


def eval_command(args: argparse.Namespace) -> int:
    """``vidinterp eval``: see :func:`vidinterp.evaluation.command.eval_command`."""
    from vidinterp.evaluation.command import eval_command as run_evaluation

    return run_evaluation(args)


def _add_track_parser(commands) -> None:
    """``vidinterp track``: point tracks from cross-frame attention (:func:`vidinterp.track`)."""
    track = commands.add_parser("track", help="track points through a video (default: the bundled demo) and write "
                                              "HTML + netCDF")
    track.add_argument("--model", default=DEFAULT_MODEL, help="as for 'run' (default: %(default)s)")
    track.add_argument("--video", help="clip to renoise, at a geometry the model takes (default: a zoo model's "
                                       "bundled clip, or a synthetic shapes clip; with --prompt and no --video, a "
                                       "generated video)")
    track.add_argument("--prompt", help="prompt (generates a video when no --video is given)")
    track.add_argument("--points", nargs="+", metavar="X,Y",
                       help="query points in pixels, e.g. 12.5,30 (default: the demo clip's object centres, else "
                            "every token cell's centre)")
    track.add_argument("--query-frame", type=int, default=0, help="pixel frame of the query points (default: 0)")
    track.add_argument("--layer", type=int, help="layer to read (default: the family's reference, else the middle)")
    track.add_argument("--step", type=int, help="schedule index to read (default: the reference's, else the last)")
    track.add_argument("--steps", type=int, help="inference steps of the schedule (default: the reference's, else 50)")
    track.add_argument("--temperature", default="sqrt_head_dim",
                       help="tau: sqrt_head_dim (default), sqrt_heads (the reference script's, parity only) or a number")
    track.add_argument("--temporal", choices=("hold", "interpolate"), default="hold",
                       help="positions across the pixel frames of a latent frame (default: %(default)s)")
    track.add_argument("--occlusion-threshold", type=float, help="predict occluded below this confidence")
    track.add_argument("--seed", type=int, default=0)
    track.add_argument("--out", default="vidinterp-out", help="output directory")
    track.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _points(values: list[str] | None):
    import numpy as np

    if values is None:
        return None
    points = []
    for value in values:
        try:
            x, y = (float(part) for part in value.split(","))
        except ValueError:
            raise ValueError(f"--points takes X,Y pairs of pixels, e.g. 12.5,30; got {value!r}") from None
        points.append((x, y))
    return np.array(points)


def track_command(args: argparse.Namespace) -> int:
    import numpy as np

    import vidinterp
    from vidinterp.inputs import load_model
    from vidinterp.registry import adapter_for
    from vidinterp.plotting import plot_tracks
    from vidinterp.tracking_metrics import evaluation_mask, pck, tapvid_metrics

    started = time.perf_counter()
    out = Path(args.out)
    _check_out(out)
    temperature = args.temperature
    if temperature not in ("sqrt_head_dim", "sqrt_heads"):
        try:
            temperature = float(temperature)
        except ValueError:
            raise ValueError(f"--temperature must be sqrt_head_dim, sqrt_heads or a number, got {temperature!r}") from None
    pipe = load_model(args.model)
    points, clip, video, prompt = _points(args.points), None, args.video, args.prompt
    if video is None and prompt is None:
        clip = _demo_clip(args.model, adapter_for(pipe).default_geometry(), args.seed)
        video, prompt = clip.frames, clip.caption
        if points is None:
            points = clip.tracks[:, args.query_frame] + 0.5  # shapes pixel centres are integers; here c + 0.5
    tracks = vidinterp.track(
        pipe, video=video, points=points, prompt=prompt, query_frames=args.query_frame, layer=args.layer,
        step=args.step, num_inference_steps=args.steps, temperature=temperature, temporal=args.temporal,
        occlusion_threshold=args.occlusion_threshold, seed=args.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    netcdf, html = out / "tracks.nc", out / "tracks.html"
    tracks.to_netcdf(netcdf, engine="h5netcdf")
    plot_tracks(tracks).write_html(html, include_plotlyjs=True)
    print(f"{tracks.sizes['point']} tracks over {tracks.sizes['frame']} frames from layer {tracks.attrs['layer']} at "
          f"step {tracks.attrs['step']} of {tracks.attrs['num_inference_steps']} ({tracks.attrs['layer_step_source']})")
    if clip is not None and args.points is None:
        truth = clip.tracks + 0.5
        rows = np.clip(np.rint(clip.tracks[..., 1]).astype(int), 0, clip.height - 1)
        columns = np.clip(np.rint(clip.tracks[..., 0]).astype(int), 0, clip.width - 1)
        occluded = ~np.take_along_axis(clip.masks.reshape(*clip.masks.shape[:2], -1),
                                        (rows * clip.width + columns)[..., None], axis=2)[..., 0]
        predicted, queries = tracks["tracks"].values, np.full(len(truth), args.query_frame)
        scores = tapvid_metrics(predicted, truth, occluded, queries, (clip.height, clip.width))
        after = evaluation_mask(queries, clip.num_frames)
        print(f"demo clip, frames after the query: PCK@8px {pck(predicted, truth, occluded, evaluate=after):.3f}, "
              f"TAP-Vid delta_avg {scores['delta_avg']:.3f}")
    print(f"wrote {html} and {netcdf} in {time.perf_counter() - started:.1f} s")
    return 0


def _demo_clip(model: str, geometry: tuple[int, int, int], seed: int):
    """A zoo model's bundled clip, or a two-object shapes clip at ``geometry`` (frames, H, W)."""
    from vidinterp.datasets.shapes import ShapesConfig, generate_clip, load_clip

    if model.startswith("zoo:"):
        import vidinterp

        return load_clip(vidinterp.zoo.demo_clip(model.removeprefix("zoo:")))
    frames, height, width = geometry
    config = ShapesConfig(num_frames=max(frames, 2), height=height, width=width, num_objects=(2, 2),
                          motion_probability=0.5 if frames > 1 else 0.0, partial_motion_probability=0.0,
                          size_range=(max(4, min(height, width) // 4), max(5, min(height, width) // 3)))
    clip = generate_clip(config, seed=seed)
    return dataclasses.replace(clip, frames=clip.frames[:frames], masks=clip.masks[:, :frames],
                               moving=clip.moving[:, :frames])


def _methods(requested: list[str] | None, adapter, frames: int) -> list:
    """Analyses by name: the requested ones, or the defaults the model's sites and frames allow."""
    from vidinterp.registry import analysis_classes

    classes = analysis_classes()
    if requested is None:
        kinds = {spec.kind for spec in adapter.site_specs()}
        return [classes[name]() for name in DEFAULT_METHODS
                if kinds & set(classes[name].site_kinds) and classes[name].min_frames <= frames]
    unknown = [name for name in requested if name not in classes]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {sorted(classes)}")
    return [classes[name]() for name in requested]


def _check_out(out: Path) -> None:
    """Refuse an output path that cannot become a directory before any work starts."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a directory to write trace.html and trace.nc into")
    parent = next(path for path in (out, *out.parents) if path.exists())
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {str(out)!r} is not writable ({str(parent)!r} is not)")


def _note(message: str) -> None:
    print(f"vidinterp: note: {message}", file=sys.stderr)


def _missing_concepts(prompt: str, concepts: list[str]) -> list[str]:
    """The concepts that are not a word (or run of words) of ``prompt``, case-insensitively (as
    :func:`vidinterp.prompt_words.locate_prompt_words` matches them)."""
    from vidinterp.prompt_words import concept_span

    return [concept for concept in concepts if concept_span(prompt, concept) is None]


def _prompt_for(adapter, prompt: str | None, caption: str | None, concepts: list[str]) -> str:
    """The prompt to trace with. ``prompt`` when given; else the demo clip's ``caption`` (or
    nothing for a user's clip), extended with the concepts it lacks when the model reads
    concepts from the prompt's words (no concept stream), which the user is told in one line."""
    if prompt is not None:
        return prompt
    base = caption or ""
    if adapter.has_concept_stream:
        return base
    missing = _missing_concepts(base, concepts)
    if not missing:
        return base
    built = " ".join([base, *missing]).strip()
    if caption:
        _note(f"{adapter.family} reads concepts from the prompt's words and the demo clip's caption {caption!r} lacks "
              f"{missing}: prompting with {built!r} (give --prompt to choose)")
    else:
        _note(f"{adapter.family} reads concepts from the prompt's words and no --prompt was given: prompting with "
              f"{built!r} (give --prompt to describe the clip)")
    return built


def _notes_shown(show):
    """A ``warnings.showwarning`` that prints vidinterp's resampling notice as one note line and
    hands every other warning to ``show``."""
    from vidinterp.video import VideoResampledWarning

    def show_notes(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, VideoResampledWarning):
            _note(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    return show_notes


def run(args: argparse.Namespace) -> int:
    import vidinterp
    from vidinterp.inputs import load_model
    from vidinterp.registry import adapter_for
    from vidinterp.video import VideoResampledWarning

    started = time.perf_counter()
    out = Path(args.out)
    _check_out(out)
    pipe = load_model(args.model)
    adapter = adapter_for(pipe)
    given = (args.num_frames, args.height, args.width)
    geometry = tuple(size if size is not None else native for size, native in zip(given, adapter.default_geometry()))
    frames = adapter.layout_for(*geometry).frames
    analyses = _methods(args.methods, adapter, frames)
    if args.video is None:
        clip = _demo_clip(args.model, geometry, args.seed)
        concepts = args.concepts or list(clip.concepts)
        video, prompt = clip.frames, _prompt_for(adapter, args.prompt, clip.caption, concepts)
    else:
        if not args.concepts:
            raise ValueError("--concepts is required with --video (the words to map, e.g. --concepts dog walking)")
        concepts = args.concepts
        video, prompt = args.video, _prompt_for(adapter, args.prompt, None, concepts)
    with warnings.catch_warnings():
        warnings.simplefilter("always", VideoResampledWarning)
        warnings.showwarning = _notes_shown(warnings.showwarning)
        trace = vidinterp.trace(
            pipe, video=video, prompt=prompt, concepts=concepts, analyses=analyses,
            num_inference_steps=args.steps, renoise_step=args.renoise_step, resample=args.resample, fit=args.fit,
            num_frames=args.num_frames, height=args.height, width=args.width, seed=args.seed,
            memory_limit=args.memory_limit,
        )
    out.mkdir(parents=True, exist_ok=True)
    netcdf = trace.save(out / "trace.nc")
    html = trace.report(out / "trace.html")
    print(trace)
    print(f"prompt: {prompt!r}; concepts: {concepts}")
    print(f"wrote {html} and {netcdf} in {time.perf_counter() - started:.1f} s")
    return 0


def _quiet_libraries() -> None:
    """Keep the libraries' informational log lines (e.g. transformers' notice that it falls back
    to a PIL image processor without torchvision) off stderr, where the command's own notes and
    errors are one line each; their errors still show, and ``--debug`` shows everything."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_libraries()
    try:
        return {"track": track_command, "eval": eval_command}.get(args.command, run)(args)
    except (ValueError, TypeError, OSError, NotImplementedError, KeyError, MemoryError) as error:
        if args.debug:
            raise
        print(f"vidinterp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
