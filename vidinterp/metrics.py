"""Scores of saliency maps against exact ground-truth masks (numpy, model-agnostic).

Conventions (docs/methods.md, "Evaluation metrics"): a map is binarised per frame by min-max
normalising it and thresholding at its mean; segmentation quality is the *correct*
foreground/background mIoU (the mean of the two classes' IoUs, not ConceptAttention's
``acc / (2 - acc)``). AUROC is the
Mann-Whitney statistic with ties counted one half, so a map that does not rank the named
object's pixels above another object's scores 0.5.

Dataset-scale scores follow the literature they are compared with: pixel accuracy, confusion
matrices and multi-class mIoU (VOC/VSPW), argmax segmentation over concepts (ConceptAttention),
VSPW's video consistency VC_n, pointing accuracy, and ConceptAttention's ``acc / (2 - acc)``
as a labelled parity number (:func:`parity_miou`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["upsample_nearest", "binarize_at_mean", "iou", "foreground_background_miou", "auroc", "pixel_accuracy",
           "parity_miou", "confusion_matrix", "multiclass_miou", "argmax_segmentation", "video_consistency",
           "pointing_accuracy", "binary_segmentation_scores"]


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


def _scored_pixels(shape: tuple[int, ...], ignore: np.ndarray | None) -> np.ndarray:
    """``bool`` array of ``shape``: ``True`` where a pixel is scored (not in ``ignore``)."""
    if ignore is None:
        return np.ones(shape, dtype=bool)
    ignore = np.asarray(ignore)
    if ignore.dtype != bool or ignore.shape != shape:
        raise ValueError(f"ignore must be a bool array of shape {shape}; got {ignore.dtype} {ignore.shape}")
    return ~ignore


def _same_shape(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as arrays; ``ValueError`` naming both shapes when they differ."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction and truth must have the same shape; got {prediction.shape} and {truth.shape}")
    return prediction, truth


def pixel_accuracy(prediction: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Fraction of scored pixels whose predicted label equals the true label.

    Args:
        prediction, truth: ``bool`` or integer label arrays of one shape (any number of dims).
        ignore: ``bool`` array of that shape; ``True`` pixels are left out (void labels).

    Returns:
        A float in ``[0, 1]``; NaN when every pixel is ignored.
    """
    prediction, truth = _same_shape(prediction, truth)
    scored = _scored_pixels(truth.shape, ignore)
    count = int(scored.sum())
    return float((prediction == truth)[scored].sum() / count) if count else float("nan")


def parity_miou(accuracy: float) -> float:
    """``accuracy / (2 - accuracy)``: a **parity number only**, not an mIoU.

    ConceptAttention's published ImageNet-segmentation "mIoU" equals this function of its pixel
    accuracy because of a metric bug; report it beside :func:`pixel_accuracy` only to compare with
    that table. The correct two-class score is :func:`foreground_background_miou`.

    Raises:
        ValueError: when ``accuracy`` is outside ``[0, 1]`` (NaN passes through).
    """
    if not 0.0 <= accuracy <= 1.0 and not np.isnan(accuracy):
        raise ValueError(f"accuracy must be in [0, 1]; got {accuracy}")
    return float(accuracy / (2.0 - accuracy))


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore: np.ndarray | None = None) -> np.ndarray:
    """``int64 [num_classes, num_classes]`` pixel counts, rows the true class, columns the predicted one.

    Args:
        prediction, truth: integer (or ``bool``) label arrays of one shape, labels in
            ``[0, num_classes)`` on every scored pixel (map a background label ``-1`` of
            :func:`argmax_segmentation` to a class index first).
        num_classes: the number of classes C.
        ignore: ``bool`` array of that shape; ``True`` pixels are not counted.

    Raises:
        ValueError: a scored pixel has a label outside ``[0, num_classes)`` (the message names the
            labels), or the shapes differ.
    """
    prediction, truth = _same_shape(prediction, truth)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    scored = _scored_pixels(truth.shape, ignore)
    predicted, true = prediction[scored].astype(np.int64), truth[scored].astype(np.int64)
    for name, labels in (("prediction", predicted), ("truth", true)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} labels must be in [0, {num_classes}) on scored pixels; "
                             f"got {sorted(set(bad.tolist()))[:10]}")
    counts = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def multiclass_miou(confusion: np.ndarray, present_only: bool = True) -> tuple[float, np.ndarray]:
    """Mean intersection over union from a confusion matrix.

    The IoU of class ``c`` is ``confusion[c, c] / (row_c + column_c - confusion[c, c])``; a class
    absent from both the truth and the prediction (empty union) has IoU NaN in the per-class array.

    Args:
        confusion: ``[C, C]`` non-negative counts, rows true class, columns predicted class (as
            :func:`confusion_matrix` returns).
        present_only: ``True`` (the VOC/VSPW convention): the mean is over the classes present in
            the truth or the prediction (NaN when there is none). ``False``: over all C classes,
            an absent class counting as IoU 1 (nothing there, nothing predicted), as :func:`iou`
            does; for C = 2 this is :func:`foreground_background_miou`.

    Returns:
        ``(miou, per_class)``, ``per_class`` a float64 ``[C]`` array with NaN for absent classes.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or (confusion < 0).any():
        raise ValueError(f"confusion must be a square [C, C] array of non-negative counts; got shape {confusion.shape}")
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    present = union > 0
    per_class = np.full(len(union), np.nan)
    per_class[present] = intersection[present] / union[present]
    if present_only:
        miou = float(per_class[present].mean()) if present.any() else float("nan")
    else:
        miou = float(np.where(present, per_class, 1.0).mean())
    return miou, per_class


def argmax_segmentation(maps: np.ndarray, background: float | None = None) -> np.ndarray:
    """Multi-class labels from concept maps: each pixel takes the concept with the largest map.

    ``background=None`` is the ConceptAttention (and IMAP) zero-shot protocol: a plain argmax over
    the raw maps, background handled by including background concepts ("background", "sky", ...)
    among the maps and mapping them to the background class afterwards. With a ``background``
    threshold ``t``, each concept's map is first min-max normalised per frame (over the last two
    axes, as :func:`binarize_at_mean` does; a constant frame normalises to 0), the argmax is taken
    over the normalised maps, and a pixel whose winning normalised value is below ``t`` is
    labelled ``-1`` (background).

    Args:
        maps: float ``[C, ..., h, w]`` (e.g. ``[C, F, h, w]``), C >= 1 concepts.
        background: ``None``, or a threshold in ``[0, 1]``.

    Returns:
        ``int64 [..., h, w]`` concept indices in ``[0, C)``, or ``-1`` for background; ties go to
        the first concept.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be [C, ..., h, w] with C >= 1 concepts; got shape {maps.shape}")
    if background is None:
        return maps.argmax(axis=0).astype(np.int64)
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"background must be a threshold in [0, 1] or None; got {background}")
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    normalised = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    labels = normalised.argmax(axis=0).astype(np.int64)
    labels[normalised.max(axis=0) < background] = -1
    return labels


def video_consistency(prediction: np.ndarray, truth: np.ndarray, window: int,
                      ignore: np.ndarray | None = None) -> float:
    """VSPW's video consistency VC_n of one clip's label maps.

    For every window of ``n = window`` consecutive frames, among the pixels whose true label is
    the same in all n frames (and that no frame of the window ignores), the fraction whose
    predicted label is also the same in all n frames; the mean over windows. As in VSPW's
    ``VC_perclip.py``, the predicted label is compared only with itself across the window, not
    with the truth. Differences from that script: every one of the ``F - n + 1`` windows is used
    (the paper's formula; the script's ``range(F - n)`` drops the last one), and a clip with
    ``F <= n`` frames is scored on one window of all its F frames (the script skips clips with
    ``F <= n``). Windows without a consistent true pixel are skipped (the script's ``nanmean``).
    The dataset's mVC_n averages this over clips (mVC_8, mVC_16).

    Args:
        prediction, truth: integer label arrays ``[F, H, W]``, F >= 2.
        window: n >= 2 frames.
        ignore: ``bool [F, H, W]``, pixels left out.

    Returns:
        A float in ``[0, 1]``; NaN when no window has a consistent, scored true pixel.
    """
    prediction, truth = _same_shape(prediction, truth)
    if truth.ndim != 3 or truth.shape[0] < 2:
        raise ValueError(f"video_consistency needs [F, H, W] labels with F >= 2 frames; got shape {truth.shape}")
    if window < 2:
        raise ValueError(f"window must be >= 2 frames; got {window}")
    scored = _scored_pixels(truth.shape, ignore)
    span = min(window, truth.shape[0])
    fractions = []
    for start in range(truth.shape[0] - span + 1):
        frames = slice(start, start + span)
        true_same = (truth[frames] == truth[start]).all(axis=0) & scored[frames].all(axis=0)
        predicted_same = (prediction[frames] == prediction[start]).all(axis=0)
        if true_same.any():
            fractions.append((true_same & predicted_same).sum() / true_same.sum())
    return float(np.mean(fractions)) if fractions else float("nan")


def pointing_accuracy(frame_maps: np.ndarray, masks: np.ndarray) -> float:
    """Fraction of frames whose map peak falls on the object.

    A frame counts when its mask is non-empty; it is a hit when the map's argmax cell (ties: the
    first in row-major order), upsampled as :func:`upsample_nearest` does, covers at least one
    mask pixel.

    Args:
        frame_maps: float ``[F, h, w]`` token-grid maps (or pixel maps, h = H).
        masks: ``bool [F, H, W]``, H and W whole multiples of h and w.

    Returns:
        A float in ``[0, 1]``; NaN when every mask is empty.
    """
    frame_maps, masks = np.asarray(frame_maps), np.asarray(masks, dtype=bool)
    if frame_maps.ndim != 3 or masks.ndim != 3 or frame_maps.shape[0] != masks.shape[0]:
        raise ValueError(f"frame_maps must be [F, h, w] and masks [F, H, W] with the same F; "
                         f"got {frame_maps.shape} and {masks.shape}")
    (_, grid_h, grid_w), (_, height, width) = frame_maps.shape, masks.shape
    if height % grid_h or width % grid_w:
        raise ValueError(f"mask size {height}x{width} must be a whole multiple of the map grid {grid_h}x{grid_w}")
    cell_h, cell_w = height // grid_h, width // grid_w
    hits = []
    for frame_map, mask in zip(frame_maps, masks):
        if mask.any():
            y, x = np.unravel_index(int(np.argmax(frame_map)), frame_map.shape)
            hits.append(bool(mask[y * cell_h:(y + 1) * cell_h, x * cell_w:(x + 1) * cell_w].any()))
    return float(np.mean(hits)) if hits else float("nan")


def binary_segmentation_scores(frame_maps: np.ndarray, mask: np.ndarray,
                               ignore: np.ndarray | None = None) -> dict[str, float]:
    """Zero-shot binary segmentation scores of one concept's maps of one clip.

    Each frame's map is binarised with :func:`binarize_at_mean`, upsampled to the mask with
    :func:`upsample_nearest`, and the clip's scored pixels are pooled into one two-class
    confusion matrix (a one-frame clip is one image).

    Args:
        frame_maps: float ``[F, h, w]`` token-grid maps or ``[F, H, W]`` pixel maps.
        mask: ``bool [F, H, W]`` ground truth.
        ignore: ``bool [F, H, W]`` pixels left out, or ``None``.

    Returns:
        ``{"miou": the correct foreground/background mIoU (both classes counted, an absent class
        as IoU 1, as foreground_background_miou), "accuracy": pixel accuracy, "miou_parity":
        parity_miou(accuracy)}``.
    """
    frame_maps, mask = np.asarray(frame_maps), np.asarray(mask)
    if frame_maps.ndim != 3 or mask.ndim != 3 or mask.dtype != bool or frame_maps.shape[0] != mask.shape[0]:
        raise ValueError(f"frame_maps must be [F, h, w] and mask bool [F, H, W] with the same F; "
                         f"got {frame_maps.shape} and {mask.dtype} {mask.shape}")
    binary = np.stack([binarize_at_mean(frame_map) for frame_map in frame_maps])
    prediction = upsample_nearest(binary, *mask.shape[1:])
    miou, _ = multiclass_miou(confusion_matrix(prediction, mask, 2, ignore), present_only=False)
    accuracy = pixel_accuracy(prediction, mask, ignore)
    return {"miou": miou, "accuracy": accuracy, "miou_parity": parity_miou(accuracy)}
