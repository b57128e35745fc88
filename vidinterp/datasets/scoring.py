"""Scores of concept maps against the exact ground truth of a shapes clip.

:func:`score_maps` turns one method's maps of one clip into metric samples, the numbers that
``benchmarks/shapes.py`` averages into its table, the shapes notebook shows per word and the
shipped-model tests check. Maps are ``[C, F, h, w]`` on any grid whose cells tile the frame; a
map is compared with pixel masks by nearest upsampling of its cells
(:func:`vidinterp.metrics.upsample_nearest`).

Metrics (each a list of samples; a concept adds to a metric only where it applies):

* ``object_miou``: noun and colour words; per frame the map is min-max normalised and
  thresholded at its mean (:func:`~vidinterp.metrics.binarize_at_mean`); foreground/background
  mIoU against the word's ground-truth mask, averaged over frames. One sample per word.
* ``motion_iou``: direction words, on the frames where the named object moves; foreground IoU of
  the thresholded map with the moving object's mask, averaged over those frames.
* ``temporal``: direction words of objects that move on some frames and rest on others; with the
  map shifted to be non-negative over the clip, mean map per moving frame divided by the sum of
  the mean per moving frame and the mean per static frame (0.5: no temporal localisation).
* ``auroc_2obj``: two-object clips, each word naming exactly one of the two objects (its noun,
  colour or direction): AUROC of the map's values on the named object's pixels against the other
  object's pixels, per frame where both are visible, averaged over those frames. The same
  sample also goes to ``auroc_noun``, ``auroc_color`` or ``auroc_direction`` by the word's kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidinterp.datasets.shapes import COLORS, DIRECTIONS, SHAPES, ShapesGroundTruth
from vidinterp.metrics import auroc, binarize_at_mean, foreground_background_miou, iou, upsample_nearest

__all__ = ["METRICS", "AUROC_KINDS", "ALL_METRICS", "naming", "score_maps"]

#: the benchmark table's main columns
METRICS = ("object_miou", "motion_iou", "temporal", "auroc_2obj")
#: ``auroc_2obj`` split by the kind of word naming the object
AUROC_KINDS = ("auroc_noun", "auroc_color", "auroc_direction")
ALL_METRICS = METRICS + AUROC_KINDS


def naming(truth: ShapesGroundTruth, word: str) -> np.ndarray:
    """``bool [objects]``: which of the clip's objects ``word`` names (as noun, colour or direction)."""
    return np.array([word in (obj.shape, obj.color, obj.direction) for obj in truth.objects])


def score_maps(truth: ShapesGroundTruth, concepts: Sequence[str], maps: np.ndarray) -> dict[str, list[float]]:
    """Metric samples of one method's maps of one clip.

    Args:
        truth: the clip's ground truth (a :class:`~vidinterp.datasets.shapes.ShapesClip` or one
            read back from a manifest); masks are ``[objects, F, H, W]``.
        concepts: the word of each map, length C.
        maps: ``[C, F, h, w]`` maps, ``H`` a multiple of ``h`` and ``W`` of ``w``.

    Returns:
        ``{metric: samples}`` for every name in :data:`ALL_METRICS` (see the module docstring).

    Raises:
        ValueError: if ``maps`` is not ``[len(concepts), F, h, w]`` with the clip's F frames.
    """
    num_objects, num_frames, height, width = truth.masks.shape
    if maps.ndim != 4 or maps.shape[:2] != (len(concepts), num_frames):
        raise ValueError(f"maps must be [concepts={len(concepts)}, frames={num_frames}, h, w]; got {maps.shape}")
    pixels = upsample_nearest(maps, height, width)  # [C, F, H, W]
    out: dict[str, list[float]] = {name: [] for name in ALL_METRICS}
    for word, m in zip(concepts, pixels):
        if word in SHAPES or word in COLORS:
            region = truth.concept_mask(word)
            values = [foreground_background_miou(binarize_at_mean(m[f]), region[f]) for f in range(num_frames)]
            out["object_miou"].append(float(np.mean(values)))
        if word in DIRECTIONS:
            region = truth.concept_mask(word)
            moving_frames = [f for f in range(num_frames) if region[f].any()]
            if moving_frames:
                out["motion_iou"].append(float(np.mean([iou(binarize_at_mean(m[f]), region[f]) for f in moving_frames])))
            moving = truth.moving[naming(truth, word)].any(axis=0)
            if moving.any() and not moving.all():
                per_frame = (m - m.min()).reshape(num_frames, -1).mean(axis=1)
                a, b = per_frame[moving].mean(), per_frame[~moving].mean()
                out["temporal"].append(float(a / (a + b)) if a + b > 0 else 0.5)
        if num_objects == 2:
            named = naming(truth, word)
            if named.sum() == 1:
                named_mask, other_mask = truth.masks[int(np.argmax(named))], truth.masks[int(np.argmin(named))]
                frames = [f for f in range(num_frames) if named_mask[f].any() and other_mask[f].any()]
                if frames:  # within a frame: both objects are there at the same noise level
                    value = float(np.mean([auroc(m[f][named_mask[f]], m[f][other_mask[f]]) for f in frames]))
                    kind = "noun" if word in SHAPES else "color" if word in COLORS else "direction"
                    out["auroc_2obj"].append(value)
                    out[f"auroc_{kind}"].append(value)
    return out
