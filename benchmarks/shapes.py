"""Ground-truth motion benchmark of the map methods on the trained shapes model.

For held-out shapes clips (seeds disjoint from training and validation), renoise each clip with
its own caption, trace every method variant and score the maps against the clips' exact
ground truth. Prints a table shaped like Table 2 of the IMAP paper (one row per method, one
column per criterion) plus a random-map baseline row, and writes it with the raw numbers to
``benchmarks/results/``. Not run in CI::

    python benchmarks/shapes.py                                # packaged weights (vidinterp.zoo)
    python benchmarks/shapes.py --checkpoint runs/shapes/checkpoint.pt --clips 60
    python benchmarks/shapes.py --untrained --clips 4          # smoke run of the machinery

Metrics (maps are ``(concept, frame, y, x)`` on the 8x8 token grid; one latent frame per pixel
frame; a map is compared with pixel masks by nearest upsampling of its token cells):

* **object mIoU**, **motion IoU**, **temporal**, **AUROC (2 obj)** (and its split by the kind of
  naming word): as :func:`vidinterp.datasets.scoring.score_maps` defines them, averaged over
  every sample of every clip. The clips are scored by the evaluation runner's shapes task
  (``vidinterp.evaluation.tasks.ShapesTask``, what ``vidinterp eval shapes`` runs) on the
  records of :mod:`vidinterp.datasets.shapes_source`; note that ``vidinterp eval`` averages each
  clip's samples first and then the clips, while this table pools the samples.
* **QK-peak pointing**: per (layer, head), the share of (concept, frame) surrogate tokens
  (``trace.diagnostics`` ``surrogate_y``/``surrogate_x``) whose 4x4-pixel cell overlaps the named
  object's mask (noun and colour concepts naming one object, frames where it is visible).
* **binding**: v-loss with two attribute words (colours, or nouns) swapped between the objects
  of a two-object caption, over the loss with the true caption, same clips and noise. Exactly 1
  when the model sees the caption as a bag of words: CogVideoX gives text tokens no position,
  so only the text encoder can tell which word belongs to which object.
* **word use**: the same ratio on one-object clips with the noun, colour or direction word
  replaced by another: 1 when the model's prediction ignores that kind of word.
* **CHI vs motion IoU**: per-head GramCol maps (each single (layer, head)); Pearson correlation
  between a head's mean ``separation_chi`` and its mean motion IoU, over heads.
* **Point tracking** (a second table): :func:`vidinterp.track` on each clip (renoised once at
  its layer and step: ``--track-layer``/``--track-step``, default :func:`vidinterp.tracking.
  tracking_layer_step`'s) from each object's box centre at frame 0 (the clip's ``tracks``, ``+
  0.5`` in the tracking pixel convention), scored against the clip's exact tracks: **PCK at 8 px**
  (at the clip's own resolution) and **TAP-Vid delta_avg** (thresholds 1, 2, 4, 8, 16 px after
  rescaling to 256 x 256, query mode "first"), each per clip and averaged over clips (as TAP-Vid
  averages per video). An object is occluded in truth at frames where none of its pixels is
  visible. Baselines: **random tracks** (every evaluated frame a uniform random pixel position)
  and **zero motion** (the query point held still).

Layer selection ("+ layer sel."): lambda2 layer scores are calibrated on ``--calibration-clips``
training-distribution clips (renoised, not the benchmark clips); this model has no published
threshold, so layers scoring above the median layer score are kept (``Lambda2Layers`` with the
median as threshold). ``--save-layer-scores`` writes the scores and that threshold in the file
format ``vidinterp.zoo.load`` reads beside the weights, so the shipped model's ``IMAP()`` selects
the same layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import vidinterp
from vidinterp.ablations import ablation_analyses
from vidinterp.analyses.concept_attention import ConceptAttention
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.lambda2 import Lambda2, save_layer_scores
from vidinterp.analyses.qk_matching import QKMatching
from vidinterp.analyses.separation import Separation
from vidinterp.datasets.shapes import (
    COLORS, DIRECTIONS, SHAPES, ShapesClip, clip_seed, generate_clip, make_caption,
)
from vidinterp.datasets.scoring import ALL_METRICS, AUROC_KINDS, naming, score_maps
from vidinterp.datasets.shapes_source import shapes_record
from vidinterp.evaluation.fitting import fit_record, target_geometry
from vidinterp.evaluation.tasks import get_task
from vidinterp.registry import adapter_for
from vidinterp.tracking_metrics import evaluation_mask, pck, tapvid_metrics
from vidinterp.plotting import head_map_analyses
from vidinterp.selectors import LayerIndices
from vidinterp.zoo.shapes import (
    ShapesModelConfig, build_shapes_pipeline, clip_latents, load_state, train_clip_config, velocity_loss,
)

warnings.filterwarnings("ignore", category=FutureWarning)

HELDOUT_SEED = 20_000_003  # benchmark clips; training uses --seed (0), validation 10_000_019
CALIBRATION_SEED = 30_000_001
TUNING_SEED = 50_000_017  # clips for choosing settings (--tuning), never the reported ones


def heldout_clips(n: int, config: ShapesModelConfig, root: int = HELDOUT_SEED) -> list[ShapesClip]:
    """``n`` clips, alternating one object / two objects."""
    one, two = train_clip_config(config, (1, 1)), train_clip_config(config, (2, 2))
    return [generate_clip(one if i % 2 == 0 else two, clip_seed(root, i)) for i in range(n)]


def load_pipe(args):
    if args.untrained:
        return build_shapes_pipeline(ShapesModelConfig())
    if args.checkpoint:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        pipe = build_shapes_pipeline(ShapesModelConfig.from_dict(checkpoint["config"]))
        load_state(pipe, checkpoint["ema"])
        pipe.benchmark_step = int(checkpoint["step"])
        return pipe
    return vidinterp.zoo.load("shapes", weights=args.weights)


# ------------------------------------------------------------------ method variants
def named(analysis, name: str):
    analysis.name = name
    return analysis


def per_layer_analyses(num_layers: int) -> list:
    """Cross attention and ConceptAttention of one layer each: where in depth the word signal is."""
    return [named(cls(layers=LayerIndices([layer])), f"layer_{layer}_{cls.name}")
            for layer in range(num_layers) for cls in (CrossAttention, ConceptAttention)]


# ------------------------------------------------------------------ metrics
def pointing(clip: ShapesClip, concepts: list[str], diagnostics) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``[layer, head]`` shares of surrogate tokens inside the named object's cell-dilated mask and
    inside the other object's (two-object clips; zeros otherwise), and the chance level: the
    expected share inside the named object for a token drawn uniformly from the frame's cells."""
    if "surrogate_y" not in diagnostics:
        return None
    ys = diagnostics["surrogate_y"].isel(step=0).values  # [C, F, L, H]
    xs = diagnostics["surrogate_x"].isel(step=0).values
    grid_h = diagnostics.sizes.get("y", None)
    cell = clip.height // 8 if grid_h is None else clip.height // grid_h
    hits, wrong, total, chance = 0, 0, 0, 0.0
    for c, word in enumerate(concepts):
        if not (word in SHAPES or word in COLORS) or naming(clip, word).sum() != 1:
            continue
        def cell_mask(mask: np.ndarray) -> np.ndarray:
            return mask.reshape(clip.num_frames, mask.shape[1] // cell, cell, mask.shape[2] // cell, cell).any(axis=(2, 4))

        cells = cell_mask(clip.masks[int(np.argmax(naming(clip, word)))])
        other = cell_mask(clip.masks[int(np.argmin(naming(clip, word)))]) if len(clip.objects) == 2 else None
        for f in range(clip.num_frames):
            if not cells[f].any():
                continue
            y, x = ys[c, f].astype(int), xs[c, f].astype(int)
            inside = cells[f][y.clip(0), x.clip(0)] & (y >= 0)
            hits = hits + inside.astype(float)
            if other is not None:
                wrong = wrong + (other[f][y.clip(0), x.clip(0)] & (y >= 0) & ~cells[f][y.clip(0), x.clip(0)])
            chance += float(cells[f].mean())
            total += 1
    return (hits / total, np.broadcast_to(wrong / total, hits.shape), chance / total) if total else None


def calibrate_layers(pipe, config: ShapesModelConfig, clips: int, renoise_kwargs: dict) -> dict[int, float]:
    """lambda2 layer scores over renoised calibration clips."""
    runs = []
    for clip in heldout_clips(clips, config, CALIBRATION_SEED):
        runs.append(Lambda2())
        vidinterp.trace(pipe, video=clip.frames, prompt=clip.caption, concepts=clip.nouns[:1], analyses=[runs[-1]],
                        **renoise_kwargs)
    total = runs[0]
    for run in runs[1:]:
        total.merge(run)
    return total.layer_scores()


def swapped_caption(clip: ShapesClip, attribute: str) -> str | None:
    """Caption of a two-object clip with ``attribute`` (``"color"`` or ``"shape"``) exchanged
    between its objects; ``None`` when the objects share it, or share everything else (the swap
    would describe the same scene)."""
    first, second = clip.objects
    others = [name for name in ("shape", "color", "motion_word") if name != attribute]
    if getattr(first, attribute) == getattr(second, attribute) or all(
            getattr(first, name) == getattr(second, name) for name in others):
        return None
    return make_caption([dataclasses.replace(first, **{attribute: getattr(second, attribute)}),
                         dataclasses.replace(second, **{attribute: getattr(first, attribute)})])


def replaced_caption(clip: ShapesClip, attribute: str, words: tuple[str, ...]) -> str | None:
    """Caption of a one-object clip with its ``attribute`` (``"shape"``, ``"color"`` or
    ``"direction"``) replaced by the next word of ``words``; ``None`` for two-object clips and,
    for ``"direction"``, static objects."""
    if len(clip.objects) != 1 or getattr(clip.objects[0], attribute) not in words:
        return None
    obj = clip.objects[0]
    other = words[(words.index(getattr(obj, attribute)) + 1) % len(words)]
    return make_caption([dataclasses.replace(obj, **{attribute: other})])


@torch.no_grad()
def caption_loss_ratio(pipe, pairs: list[tuple[ShapesClip, str | None]],
                       timesteps: tuple[int, ...] = (300, 600, 900)) -> tuple[float, int]:
    """v-loss of each clip with the paired (altered) caption over its v-loss with its true
    caption, same noise, averaged over ``timesteps``; returns ``(ratio, clips used)``. Pairs
    whose caption is ``None`` (no alteration applies) are skipped. 1 means the model's
    prediction ignores what the alteration changed."""
    pairs = [(clip, caption) for clip, caption in pairs if caption is not None]
    if not pairs:
        return float("nan"), 0
    config = pipe.shapes_config
    latents = clip_latents(pipe, [clip for clip, _ in pairs])
    rotary = pipe._prepare_rotary_positional_embeddings(config.height, config.width, config.num_frames, "cpu")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    true, altered = ([pipe.encode_prompt(captions, do_classifier_free_guidance=False,
                                         max_sequence_length=config.max_text_length, device="cpu")[0]
                      for captions in ([clip.caption for clip, _ in pairs], [caption for _, caption in pairs])])
    ratios = []
    for t in timesteps:
        step = torch.full((len(pairs),), t)
        ratios.append(float(velocity_loss(pipe, latents, noise, step, altered, rotary))
                      / float(velocity_loss(pipe, latents, noise, step, true, rotary)))
    return float(np.mean(ratios)), len(pairs)


def binding_loss_ratio(pipe, clips: list[ShapesClip], attribute: str) -> tuple[float, int]:
    """Does the model bind words to objects? :func:`caption_loss_ratio` with ``attribute``
    swapped between the two objects of two-object captions. A text conditioning that is a bag
    of words gives exactly 1; a model that binds, more than 1."""
    two_object = [clip for clip in clips if len(clip.objects) == 2]
    return caption_loss_ratio(pipe, [(clip, swapped_caption(clip, attribute)) for clip in two_object])


def word_use_ratio(pipe, clips: list[ShapesClip], attribute: str) -> tuple[float, int]:
    """Does the model use a kind of word at all? :func:`caption_loss_ratio` with a one-object
    clip's noun, colour or direction replaced by another (1 = the word is ignored)."""
    words = {"shape": tuple(pipe.shapes_config.shapes), "color": tuple(COLORS), "direction": tuple(DIRECTIONS)}[attribute]
    return caption_loss_ratio(pipe, [(clip, replaced_caption(clip, attribute, words)) for clip in clips])


TRACKER_ROW = "vidinterp.track"
RANDOM_TRACKS_ROW = "random tracks (baseline)"
ZERO_MOTION_ROW = "zero motion (baseline)"
TRACKING_METRICS = ("pck_8px", "delta_avg")


def track_metrics(clip: ShapesClip, predicted: np.ndarray) -> dict[str, float]:
    """PCK at 8 px and TAP-Vid delta_avg of ``predicted`` ``[objects, F, 2]`` tracks (tracking
    pixel convention) against the clip's, queried at frame 0."""
    truth = clip.tracks.astype(np.float64) + 0.5
    occluded = ~clip.masks.any(axis=(2, 3))
    queries = np.zeros(len(truth), dtype=np.int64)
    evaluate = evaluation_mask(queries, clip.num_frames, "first")
    return {"pck_8px": pck(predicted, truth, occluded, threshold=8.0, evaluate=evaluate),
            "delta_avg": tapvid_metrics(predicted, truth, occluded, queries, (clip.height, clip.width))["delta_avg"]}


def tracking_rows(pipe, clip: ShapesClip, rng: np.random.Generator, layer: int | None = None,
                  step: int | None = None, seed: int = 0) -> tuple[dict[str, dict[str, float]], dict]:
    """The tracking rows of one clip (:func:`track_metrics` of the DiT's tracks and of the two
    baselines) and the tracker's layer, step and their source."""
    queries = clip.tracks[:, 0].astype(np.float64) + 0.5
    tracks = vidinterp.track(pipe, video=clip.frames, points=queries, query_frames=0, prompt=clip.caption,
                             layer=layer, step=step, seed=seed)
    frames = clip.num_frames
    random_tracks = rng.random((len(queries), frames, 2)) * np.array([clip.width, clip.height])
    random_tracks[:, 0] = queries
    still = np.repeat(queries[:, None], frames, axis=1)
    rows = {TRACKER_ROW: track_metrics(clip, tracks["tracks"].values),
            RANDOM_TRACKS_ROW: track_metrics(clip, random_tracks),
            ZERO_MOTION_ROW: track_metrics(clip, still)}
    where = {key: tracks.attrs[key] for key in ("layer", "step", "num_inference_steps", "layer_step_source")}
    return rows, where


def format_tracking_table(rows: dict[str, dict[str, float]], where: dict, clips: int, points: int,
                          size: tuple[int, int]) -> str:
    lines = [f"Point tracking ({clips} clips, {points} query points: each object's box centre at frame 0; "
             f"vidinterp.track at layer {where.get('layer')}, step {where.get('step')} of "
             f"{where.get('num_inference_steps')} ({where.get('layer_step_source')}); PCK at 8 px at "
             f"{size[1]}x{size[0]}; TAP-Vid delta_avg at 256x256, query mode first; means over clips)",
             "", "| tracker | PCK@8px | delta_avg |", "|---|---|---|"]
    for name, values in rows.items():
        cells = [f"{values[m]:.3f}" if np.isfinite(values[m]) else "n/a" for m in TRACKING_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(rows: dict[str, dict[str, float]], counts: dict[str, int], title: str) -> str:
    header = ("| method | object mIoU | motion IoU | temporal | AUROC (2 obj) | AUROC noun | AUROC colour "
              "| AUROC direction |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|"]
    for name, values in rows.items():
        cells = [f"{values[m]:.3f}" if np.isfinite(values[m]) else "n/a" for m in ALL_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("samples per column: " + ", ".join(f"{m}={counts[m]}" for m in ALL_METRICS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, default=None, help=".safetensors (default: packaged)")
    source.add_argument("--checkpoint", type=Path, default=None, help="training checkpoint (EMA weights)")
    source.add_argument("--untrained", action="store_true")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--calibration-clips", type=int, default=4)
    parser.add_argument("--k", type=int, default=2, help="heads kept by IMAP / random heads (model has 4 per layer)")
    parser.add_argument("--renoise-step", type=int, default=None, help="schedule index (default: adapter's, 30 of 50)")
    parser.add_argument("--num-renoise-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuning", action="store_true",
                        help="score tuning clips (their own seeds) instead of the held-out benchmark clips")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/shapes"))
    parser.add_argument("--save-layer-scores", type=Path, default=None,
                        help="also write the lambda2 layer scores + threshold here (zoo/weights/shapes.lambda2.json)")
    parser.add_argument("--track-layer", type=int, default=None, help="layer vidinterp.track reads (default: its own)")
    parser.add_argument("--track-step", type=int, default=None, help="step of 50 vidinterp.track reads (default: its own)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()

    pipe = load_pipe(args)
    config = pipe.shapes_config
    renoise = {"num_inference_steps": 50, "renoise_step": args.renoise_step,
               "num_renoise_steps": args.num_renoise_steps, "seed": args.seed}
    scores = calibrate_layers(pipe, config, args.calibration_clips, renoise)
    median = float(np.median(list(scores.values())))
    selected = sorted(layer for layer, score in scores.items() if score > median)
    if args.save_layer_scores is not None:
        save_layer_scores(scores, "vidinterp.zoo/shapes", args.save_layer_scores, threshold=median,
                          calibration_clips=args.calibration_clips, renoise=renoise,
                          rule="layers scoring above the median layer score")
    print(f"lambda2 layer scores {({k: round(v, 3) for k, v in scores.items()})}; selected layers {selected}", flush=True)

    samples: dict[str, dict[str, list[float]]] = {}
    rng = np.random.default_rng(args.seed)
    point_sum, point_n = None, 0
    point2_sum, point2_n, other2_sum = None, 0, None  # two-object clips: the other object is a wrong answer
    point_chance, point2_chance = [], []
    head_chi, head_motion, head_auroc = {}, {}, {}
    layer_samples: dict[str, dict[str, list[float]]] = {}
    track_samples: dict[str, dict[str, list[float]]] = {}
    track_rng = np.random.default_rng(args.seed + 1)
    track_where: dict = {}
    clips = heldout_clips(args.clips, config, TUNING_SEED if args.tuning else HELDOUT_SEED)
    shapes_task = get_task("shapes")
    for index, clip in enumerate(clips):
        concepts = clip.concepts
        record = shapes_record(clip, f"clip_{index:05d}")
        record = fit_record(record, target_geometry(adapter_for(pipe), record.num_frames))  # held-out clips fit as they are
        methods = list(ablation_analyses(selected, config.num_heads, ks=(args.k,), seed=args.seed).values())
        analyses = (methods
                    + head_map_analyses(range(config.num_layers), range(config.num_heads))
                    + per_layer_analyses(config.num_layers)
                    + [Separation(scores=("chi",)), QKMatching()])
        trace = vidinterp.trace(pipe, video=record.frames, prompt=record.caption, concepts=concepts,
                                analyses=analyses, **renoise)
        # the table's rows: the evaluation runner's shapes task, as `vidinterp eval shapes` scores them
        scored = shapes_task.score_trace(record, trace, [analysis.name for analysis in methods])
        for name, result in scored.samples.items():
            for metric, vals in result.items():
                samples.setdefault(name, {m: [] for m in ALL_METRICS})[metric].extend(vals)
        for name in trace.maps.data_vars:  # diagnostics: single heads and single layers
            if not name.startswith(("head_", "layer_")):
                continue
            result = score_maps(clip, concepts, trace.maps[name].values)
            if name.startswith("head_"):
                head_motion.setdefault(name, []).extend(result["motion_iou"])
                for metric in ("auroc_2obj", *AUROC_KINDS):
                    head_auroc.setdefault(metric, {}).setdefault(name, []).extend(result[metric])
            else:
                for metric in ("object_miou", "auroc_2obj"):
                    layer_samples.setdefault(name, {"object_miou": [], "auroc_2obj": []})[metric].extend(result[metric])
        random_maps = rng.random((len(concepts), *trace.maps[list(trace.maps.data_vars)[0]].shape[1:]))
        for metric, vals in shapes_task.score(record, list(concepts), random_maps).items():
            samples.setdefault("random maps (baseline)", {m: [] for m in ALL_METRICS})[metric].extend(vals)
        chi = trace.heads["separation_chi"].mean("step").values  # [L, H]
        for layer in range(chi.shape[0]):
            for head in range(chi.shape[1]):
                head_chi.setdefault(f"head_{layer}_{head}", []).append(float(chi[layer, head]))
        pointed = pointing(clip, concepts, trace.diagnostics)
        if pointed is not None:
            shares, other_shares, chance = pointed
            point_sum = shares if point_sum is None else point_sum + shares
            point_n += 1
            point_chance.append(chance)
            if len(clip.objects) == 2:
                point2_sum = shares if point2_sum is None else point2_sum + shares
                other2_sum = other_shares if other2_sum is None else other2_sum + other_shares
                point2_n += 1
                point2_chance.append(chance)
        clip_tracking, track_where = tracking_rows(pipe, clip, track_rng, args.track_layer, args.track_step,
                                                   args.seed)
        for name, values in clip_tracking.items():
            for metric, value in values.items():
                track_samples.setdefault(name, {m: [] for m in TRACKING_METRICS})[metric].append(value)
        if (index + 1) % 10 == 0:
            print(f"{index + 1}/{len(clips)} clips, {time.time() - started:.0f} s", flush=True)

    binding = {attribute: binding_loss_ratio(pipe, clips, attribute) for attribute in ("color", "shape")}
    word_use = {attribute: word_use_ratio(pipe, clips, attribute) for attribute in ("shape", "color", "direction")}
    rows = {name: {m: float(np.mean(v[m])) if v[m] else float("nan") for m in ALL_METRICS} for name, v in samples.items()}
    counts = {m: len(samples["cross_attention"][m]) for m in ALL_METRICS}
    heads_sorted = sorted(head_chi)
    chi_means = np.array([np.mean(head_chi[h]) for h in heads_sorted])
    motion_means = np.array([np.mean(head_motion[h]) if head_motion.get(h) else np.nan for h in heads_sorted])
    valid = np.isfinite(motion_means)
    correlation = float(np.corrcoef(chi_means[valid], motion_means[valid])[0, 1]) if valid.sum() > 2 else float("nan")
    head_auroc_means = {metric: {h: float(np.mean(v)) for h, v in per_head.items() if v}
                        for metric, per_head in head_auroc.items()}
    best_heads = {metric: max(means, key=means.get) for metric, means in head_auroc_means.items() if means}
    pointing_table = (point_sum / point_n) if point_n else None
    pointing2 = (point2_sum / point2_n) if point2_n else None
    pointing2_other = (other2_sum / point2_n) if point2_n else None

    model = "untrained" if args.untrained else str(args.checkpoint or args.weights or "vidinterp.zoo.load('shapes')")
    step = getattr(pipe, "benchmark_step", None)
    title = (f"Shapes benchmark: {len(clips)} {'tuning' if args.tuning else 'held-out'} clips ({sum(len(c.objects) == 2 for c in clips)} with two "
             f"objects), model {model}{f' (step {step})' if step is not None else ''}, renoise step "
             f"{args.renoise_step if args.renoise_step is not None else 30}/50, k={args.k}, selected layers {selected}")
    table = format_table(rows, counts, title)
    tracking = {name: {m: float(np.nanmean(v[m])) if np.isfinite(v[m]).any() else float("nan")
                       for m in TRACKING_METRICS} for name, v in track_samples.items()}
    track_points = sum(len(clip.objects) for clip in clips)
    tracking_table = format_tracking_table(tracking, track_where, len(clips), track_points, (config.height, config.width))
    best_auroc = max((v["auroc_2obj"] for n, v in rows.items() if n != "random maps (baseline)" and np.isfinite(v["auroc_2obj"])), default=float("nan"))
    extra = [
        "",
        f"QK-peak pointing accuracy (surrogate token cell inside the named object), mean over layers and heads: "
        f"{float(np.mean(pointing_table)) if pointing_table is not None else float('nan'):.3f}; best (layer, head): "
        + (f"{float(pointing_table.max()):.3f} at {tuple(int(i) for i in np.unravel_index(pointing_table.argmax(), pointing_table.shape))}"
           if pointing_table is not None else "n/a")
        + f"; chance (random token) {float(np.mean(point_chance)) if point_chance else float('nan'):.3f}"
        + "; per layer: " + (", ".join(f"{float(v):.3f}" for v in pointing_table.mean(axis=1)) if pointing_table is not None else "n/a"),
        "QK-peak pointing on two-object clips only: mean "
        + (f"{float(pointing2.mean()):.3f}, best {float(pointing2.max()):.3f} at "
           f"{tuple(int(i) for i in np.unravel_index(pointing2.argmax(), pointing2.shape))}" if pointing2 is not None else "n/a")
        + f"; chance {float(np.mean(point2_chance)) if point2_chance else float('nan'):.3f}; inside the other object "
        + (f"mean {float(pointing2_other.mean()):.3f}, at the best head "
           f"{float(pointing2_other.flat[pointing2.argmax()]):.3f}" if pointing2 is not None else "n/a"),
        "Single-head GramCol AUROC (2 obj), best head chosen after the fact (a diagnostic, not a method): "
        + "; ".join(f"{'all' if metric == 'auroc_2obj' else metric.removeprefix('auroc_')} words {head_auroc_means[metric][head]:.3f} at {head} (median over heads "
                    f"{float(np.median(list(head_auroc_means[metric].values()))):.3f})" for metric, head in best_heads.items()),
        "Single-layer maps, object mIoU / AUROC (2 obj) per layer (a diagnostic, not a method): " + "; ".join(
            f"{name.removeprefix('layer_')} {np.mean(v['object_miou']):.3f} / {np.mean(v['auroc_2obj']):.3f}"
            for name, v in layer_samples.items()),
        "Binding (v-loss with the caption's two colours / two nouns swapped, over the true caption's; "
        "t = 300, 600, 900; 1.000 = the text conditioning is a bag of words): "
        + "; ".join(f"{attribute} {ratio:.4f} ({n} clips)" for attribute, (ratio, n) in binding.items()),
        "Word use (one-object clips: v-loss with the noun / colour / direction replaced by another, over the "
        "true caption's; t = 300, 600, 900; 1.000 = the word is ignored): "
        + "; ".join(f"{attribute} {ratio:.4f} ({n} clips)" for attribute, (ratio, n) in word_use.items()),
        f"Per-head Pearson correlation of separation CHI with motion IoU ({int(valid.sum())} heads): {correlation:.3f}",
        f"Best method AUROC (2 obj): {best_auroc:.3f} (shipping bar 0.7); random-map object mIoU "
        f"{rows['random maps (baseline)']['object_miou']:.3f}",
        f"Wall time {time.time() - started:.0f} s",
    ]
    text = table + "\n\n" + tracking_table + "\n" + "\n".join(extra) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({
        "title": title, "rows": rows, "counts": counts, "selected_layers": selected,
        "lambda2_layer_scores": scores, "chi_motion_correlation": correlation,
        "per_head": {h: {"chi": float(c), "motion_iou": float(m)} for h, c, m in zip(heads_sorted, chi_means, motion_means)},
        "pointing": None if pointing_table is None else pointing_table.tolist(),
        "pointing_2obj": None if pointing2 is None else pointing2.tolist(), "best_auroc": best_auroc,
        "pointing_2obj_other_object": None if pointing2_other is None else pointing2_other.tolist(),
        "pointing_chance": float(np.mean(point_chance)) if point_chance else None,
        "pointing_2obj_chance": float(np.mean(point2_chance)) if point2_chance else None,
        "per_head_auroc": head_auroc_means,
        "binding_loss_ratio": {attribute: {"ratio": ratio, "clips": n} for attribute, (ratio, n) in binding.items()},
        "word_use_loss_ratio": {attribute: {"ratio": ratio, "clips": n} for attribute, (ratio, n) in word_use.items()},
        "per_layer": {name.removeprefix("layer_"): {m: float(np.mean(v[m])) for m in v} for name, v in layer_samples.items()},
        "tracking": {"rows": tracking, "clips": len(clips), "points": track_points, **track_where,
                     "metrics": {"pck_8px": "PCK, threshold 8 px at the clip's resolution, frames after the query",
                                 "delta_avg": "TAP-Vid delta_avg (1, 2, 4, 8, 16 px at 256x256), query mode first"}},
        "args": {k: str(v) for k, v in vars(args).items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
