"""Point-tracking metrics: PCK and the TAP-Vid metrics (delta_avg, AJ, OA). numpy only.

Conventions. Tracks are ``float [points, frames, 2]`` ``(x, y)`` pixels; occlusion flags are
``bool [points, frames]`` (True = occluded). A prediction is *within* a threshold ``delta`` when
its Euclidean distance to the truth is strictly less than ``delta`` pixels (TAP-Vid's ``<``).

* :func:`pck`: share of the evaluated, visible ground-truth points predicted within
  ``threshold`` pixels (default 8), at the video's own resolution.
* :func:`tapvid_metrics`, as TAP-Vid defines them, after rescaling both tracks to
  ``256 x 256`` (``x * 256 / W``, ``y * 256 / H``):

  - ``delta_<d>``: share of visible evaluated points within ``d`` pixels, for ``d`` in
    ``{1, 2, 4, 8, 16}``; ``delta_avg``: their mean;
  - with predicted occlusion: ``occlusion_accuracy`` (OA), the share of evaluated points whose
    predicted occlusion equals the truth; ``jaccard_<d>`` = TP / (TP + FP + FN) where TP are
    points visible in truth, predicted visible and within ``d``; FN visible in truth and either
    predicted occluded or not within ``d``; FP predicted visible and either occluded in truth or
    not within ``d``; ``average_jaccard`` (AJ) their mean.

  Evaluated points exclude each track's query frame: ``query_mode="first"`` evaluates the frames
  after it (TAP-Vid "first"), ``"strided"`` every other frame. Each ratio is pooled over the
  points and frames of one video; average the dictionaries of several videos for a dataset
  score (TAP-Vid averages per video).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

__all__ = ["THRESHOLDS", "TAPVID_SIZE", "rescale_tracks", "evaluation_mask", "pck", "tapvid_metrics"]

#: TAP-Vid's thresholds in pixels at 256 x 256.
THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: ``(height, width)`` TAP-Vid rescales tracks to before measuring.
TAPVID_SIZE: tuple[int, int] = (256, 256)


def _tracks(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 2:
        raise ValueError(f"{name} must be [points, frames, 2] (x, y) pixels, got shape {array.shape}")
    return array


def _flags(name: str, value, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(value, dtype=bool)
    if array.shape != shape:
        raise ValueError(f"{name} must be bool [points, frames] = {list(shape)}, got shape {array.shape}")
    return array


def rescale_tracks(tracks: np.ndarray, size: tuple[int, int], target: tuple[int, int] = TAPVID_SIZE) -> np.ndarray:
    """``(x, y)`` tracks of a ``size = (height, width)`` video in the pixels of ``target``."""
    (height, width), (target_height, target_width) = size, target
    return np.asarray(tracks, dtype=np.float64) * np.array([target_width / width, target_height / height])


def evaluation_mask(query_frames, frames: int, query_mode: Literal["first", "strided"] = "first") -> np.ndarray:
    """``bool [points, frames]``: the frames each track is evaluated on (after its query frame
    for ``"first"``, every other frame for ``"strided"``)."""
    query = np.asarray(query_frames, dtype=np.int64).reshape(-1, 1)
    time = np.arange(frames)[None, :]
    if query_mode == "first":
        return time > query
    if query_mode == "strided":
        return time != query
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")


def _within(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> np.ndarray:
    return np.sqrt(((predicted - truth) ** 2).sum(axis=-1)) < threshold


def pck(predicted, truth, occluded=None, threshold: float = 8.0, evaluate=None) -> float:
    """Percentage of correct keypoints (as a share in ``[0, 1]``): among the points visible in
    truth (``occluded`` False, default all visible) and selected by ``evaluate`` (bool
    ``[points, frames]``, default all, e.g. :func:`evaluation_mask`), the share predicted
    strictly within ``threshold`` pixels. NaN when no point is evaluated."""
    predicted, truth = _tracks("predicted", predicted), _tracks("truth", truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} tracks differ in shape")
    shape = predicted.shape[:2]
    visible = ~_flags("occluded", occluded, shape) if occluded is not None else np.ones(shape, dtype=bool)
    counted = visible & (_flags("evaluate", evaluate, shape) if evaluate is not None else True)
    total = int(counted.sum())
    return float((_within(predicted, truth, threshold) & counted).sum() / total) if total else float("nan")


def tapvid_metrics(
    predicted,
    truth,
    occluded,
    query_frames,
    size: tuple[int, int],
    *,
    predicted_occluded=None,
    thresholds: Sequence[float] = THRESHOLDS,
    query_mode: Literal["first", "strided"] = "first",
    target_size: tuple[int, int] = TAPVID_SIZE,
) -> dict[str, float]:
    """TAP-Vid metrics of one video (see the module docstring).

    Args:
        predicted, truth: ``float [points, frames, 2]`` ``(x, y)`` pixels of a ``size = (height,
            width)`` video.
        occluded: ``bool [points, frames]`` ground-truth occlusion.
        query_frames: ``int [points]`` each track's query frame.
        predicted_occluded: ``bool [points, frames]``; when given, OA and AJ are computed too.

    Returns:
        ``{"delta_1": ..., "delta_avg": ..., ["occlusion_accuracy", "jaccard_1", ...,
        "average_jaccard"]}`` (floats; NaN where nothing is evaluated).
    """
    predicted, truth = _tracks("predicted", predicted), _tracks("truth", truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} tracks differ in shape")
    shape = predicted.shape[:2]
    visible = ~_flags("occluded", occluded, shape)
    evaluate = evaluation_mask(query_frames, shape[1], query_mode)
    if evaluate.shape[0] != shape[0]:
        raise ValueError(f"query_frames has {evaluate.shape[0]} entries for {shape[0]} tracks")
    predicted, truth = rescale_tracks(predicted, size, target_size), rescale_tracks(truth, size, target_size)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
        total = int(denominator.sum())
        return float(numerator.sum() / total) if total else float("nan")

    metrics: dict[str, float] = {}
    gt_visible = visible & evaluate
    for threshold in thresholds:
        metrics[f"delta_{threshold:g}"] = ratio(_within(predicted, truth, threshold) & gt_visible, gt_visible)
    metrics["delta_avg"] = float(np.mean([metrics[f"delta_{t:g}"] for t in thresholds]))
    if predicted_occluded is not None:
        predicted_visible = ~_flags("predicted_occluded", predicted_occluded, shape)
        metrics["occlusion_accuracy"] = ratio((predicted_visible == visible) & evaluate, evaluate)
        for threshold in thresholds:
            within = _within(predicted, truth, threshold)
            true_positive = (visible & predicted_visible & within & evaluate).sum()
            false_negative = (visible & ~(predicted_visible & within) & evaluate).sum()
            false_positive = (predicted_visible & (~visible | ~within) & evaluate).sum()
            denominator = true_positive + false_negative + false_positive
            metrics[f"jaccard_{threshold:g}"] = float(true_positive / denominator) if denominator else float("nan")
        metrics["average_jaccard"] = float(np.mean([metrics[f"jaccard_{t:g}"] for t in thresholds]))
    return metrics
