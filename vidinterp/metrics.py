"""Scores of saliency maps against exact ground-truth masks (numpy, model-agnostic).

Conventions (docs/methods.md, "Evaluation metrics"): a map is binarised per frame by min-max
normalising it and thresholding at its mean; segmentation quality is the *correct*
foreground/background mIoU (the mean of the two classes' IoUs, not ConceptAttention's
``acc / (2 - acc)``). AUROC is the
Mann-Whitney statistic with ties counted one half, so a map that does not rank the named
object's pixels above another object's scores 0.5.
"""

from __future__ import annotations

import numpy as np

__all__ = ["upsample_nearest", "binarize_at_mean", "iou", "foreground_background_miou", "auroc"]


def upsample_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[..., h, w]`` token maps -> ``[..., height, width]`` pixels, each token cell repeated.

    Raises:
        ValueError: when ``height``/``width`` are not whole multiples of ``h``/``w``.
    """
    grid_h, grid_w = maps.shape[-2:]
    if height % grid_h or width % grid_w:
        raise ValueError(f"pixel size {height}x{width} must be a whole multiple of the map grid {grid_h}x{grid_w}")
    return maps.repeat(height // grid_h, axis=-2).repeat(width // grid_w, axis=-1)


def binarize_at_mean(frame_map: np.ndarray) -> np.ndarray:
    """``bool`` mask of one frame's map: min-max normalised, then ``> mean``; all ``False`` for
    a constant map."""
    low, high = frame_map.min(), frame_map.max()
    if high <= low:
        return np.zeros(frame_map.shape, dtype=bool)
    normalised = (frame_map - low) / (high - low)
    return normalised > normalised.mean()


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two ``bool`` masks; 1.0 when both are empty."""
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0


def foreground_background_miou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the foreground IoU and the background IoU of two ``bool`` masks."""
    return (iou(prediction, truth) + iou(~prediction, ~truth)) / 2


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random ``positive`` score exceeds a random ``negative`` one (ties 1/2).

    Args:
        positive: 1-d scores of the positive class (e.g. map values on the named object).
        negative: 1-d scores of the negative class (e.g. map values on another object).

    Raises:
        ValueError: when either class is empty.
    """
    positive, negative = np.ravel(positive), np.ravel(negative)
    if not len(positive) or not len(negative):
        raise ValueError(f"auroc needs scores of both classes, got {len(positive)} positive and {len(negative)} negative")
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average rank of each tie group
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
