"""Dataset-scale segmentation metrics of ``vidinterp.metrics``: hand-computed cases, scikit-learn
oracles (``accuracy_score``, ``confusion_matrix``, ``jaccard_score``) and brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from vidinterp.metrics import (argmax_segmentation, binarize_at_mean, binary_segmentation_scores, confusion_matrix,
                               foreground_background_miou, multiclass_miou, parity_miou, pixel_accuracy,
                               pointing_accuracy, upsample_nearest, video_consistency)


def test_pixel_accuracy_by_hand_and_against_sklearn():
    prediction, truth = np.array([[1, 0], [1, 1]]), np.array([[1, 1], [0, 1]])
    assert pixel_accuracy(prediction, truth) == 0.5  # equal at (0,0) and (1,1)
    ignore = np.array([[False, True], [False, False]])
    assert pixel_accuracy(prediction, truth, ignore) == pytest.approx(2 / 3)  # 2 of the 3 scored pixels
    assert np.isnan(pixel_accuracy(prediction, truth, np.ones((2, 2), bool)))
    rng = np.random.default_rng(0)
    prediction, truth, ignore = rng.integers(0, 4, (5, 8, 8)), rng.integers(0, 4, (5, 8, 8)), rng.random((5, 8, 8)) < .2
    expected = sk.accuracy_score(truth[~ignore], prediction[~ignore])
    assert pixel_accuracy(prediction, truth, ignore) == pytest.approx(expected)
    with pytest.raises(ValueError, match="same shape"):
        pixel_accuracy(prediction, truth[:, :4])
    with pytest.raises(ValueError, match="ignore must be a bool array"):
        pixel_accuracy(prediction, truth, ignore[:1])


def test_parity_miou():
    assert parity_miou(0.5) == pytest.approx(1 / 3)  # 0.5 / 1.5
    assert parity_miou(1.0) == 1.0 and parity_miou(0.0) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parity_miou(1.2)


def test_confusion_and_miou_by_hand():
    truth, prediction = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0])
    confusion = confusion_matrix(prediction, truth, 3)
    # rows truth, columns prediction: truth 0 -> predicted 0 and 1; truth 1 -> 1; truth 2 -> 0
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert confusion.dtype == np.int64
    # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 1 / (1 + 2 - 1), class 2 = 0 / (1 + 0 - 0)
    miou, per_class = multiclass_miou(confusion)
    np.testing.assert_allclose(per_class, [1 / 3, 1 / 2, 0])
    assert miou == pytest.approx(5 / 18)
    # a fourth class present nowhere: NaN per class; left out of the mean, or counted as IoU 1
    miou, per_class = multiclass_miou(confusion_matrix(prediction, truth, 4))
    assert miou == pytest.approx(5 / 18) and np.isnan(per_class[3])
    assert multiclass_miou(confusion_matrix(prediction, truth, 4), present_only=False)[0] == pytest.approx(11 / 24)
    ignore = np.array([False, False, False, True])  # drop the (truth 2, predicted 0) pixel
    np.testing.assert_array_equal(confusion_matrix(prediction, truth, 3, ignore), [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert np.isnan(multiclass_miou(np.zeros((3, 3)))[0])


def test_confusion_and_miou_against_sklearn():
    rng = np.random.default_rng(1)
    truth, prediction = rng.integers(0, 4, (6, 10, 10)), rng.integers(0, 3, (6, 10, 10))
    truth[truth == 3] = 2  # class 3 absent from both; class 2 never predicted
    ignore = rng.random(truth.shape) < 0.1
    labels = [0, 1, 2, 3]
    confusion = confusion_matrix(prediction, truth, 4, ignore)
    t, p = truth[~ignore], prediction[~ignore]
    np.testing.assert_array_equal(confusion, sk.confusion_matrix(t, p, labels=labels))
    miou, per_class = multiclass_miou(confusion)
    np.testing.assert_allclose(per_class[:3], sk.jaccard_score(t, p, labels=[0, 1, 2], average=None))
    assert np.isnan(per_class[3])
    assert miou == pytest.approx(sk.jaccard_score(t, p, labels=[0, 1, 2], average="macro"))
    all_classes = sk.jaccard_score(t, p, labels=labels, average="macro", zero_division=1.0)
    assert multiclass_miou(confusion, present_only=False)[0] == pytest.approx(all_classes)


def test_confusion_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"prediction labels must be in \[0, 2\).*-1"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"truth labels .*255"):
        confusion_matrix(np.array([0, 1]), np.array([0, 255]), 2)
    # a void label on an ignored pixel is fine
    assert confusion_matrix(np.array([0, 1]), np.array([0, 255]), 2, np.array([False, True])).sum() == 1


def test_binary_miou_is_foreground_background_miou():
    rng = np.random.default_rng(2)
    for _ in range(5):
        prediction, truth = rng.random((8, 8)) > rng.random(), rng.random((8, 8)) > rng.random()
        miou, _ = multiclass_miou(confusion_matrix(prediction, truth, 2), present_only=False)
        assert miou == pytest.approx(foreground_background_miou(prediction, truth))
    empty = np.zeros((3, 3), bool)
    assert multiclass_miou(confusion_matrix(empty, empty, 2), present_only=False)[0] == 1.0


def test_argmax_segmentation_by_hand():
    maps = np.array([[[0.0, 10.0, 4.0]], [[2.0, 3.0, 2.5]]])  # [C=2, h=1, w=3]
    np.testing.assert_array_equal(argmax_segmentation(maps), [[1, 0, 0]])
    # normalised per frame: concept 0 -> [0, 1, 0.4], concept 1 -> [0, 1, 0.5]; ties go to concept 0
    np.testing.assert_array_equal(argmax_segmentation(maps, background=0.5), [[-1, 0, 1]])
    np.testing.assert_array_equal(argmax_segmentation(maps, background=0.6), [[-1, 0, -1]])
    np.testing.assert_array_equal(argmax_segmentation(np.zeros((2, 1, 2)), background=0.1), [[-1, -1]])
    with pytest.raises(ValueError, match=r"\[C, \.\.\., h, w\]"):
        argmax_segmentation(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="threshold"):
        argmax_segmentation(maps, background=2.0)


def test_argmax_segmentation_against_loops():
    rng = np.random.default_rng(3)
    maps = rng.random((3, 2, 4, 5))  # [C, F, h, w]
    labels = argmax_segmentation(maps, background=0.7)
    for f in range(2):
        normalised = [(m[f] - m[f].min()) / (m[f].max() - m[f].min()) for m in maps]
        for y in range(4):
            for x in range(5):
                values = [n[y, x] for n in normalised]
                best = max(range(3), key=lambda c: (values[c], -c))
                assert labels[f, y, x] == (best if values[best] >= 0.7 else -1)
    assert argmax_segmentation(maps).shape == (2, 4, 5)


def brute_vc(prediction, truth, window, ignore):
    """VC_n with explicit loops over windows and pixels (VSPW's definition, all F - n + 1 windows)."""
    frames, height, width = truth.shape
    span = min(window, frames)
    fractions = []
    for start in range(frames - span + 1):
        consistent = both = 0
        for y in range(height):
            for x in range(width):
                true_values = {truth[start + j, y, x] for j in range(span)}
                ignored = any(ignore[start + j, y, x] for j in range(span))
                if len(true_values) == 1 and not ignored:
                    consistent += 1
                    both += len({prediction[start + j, y, x] for j in range(span)}) == 1
        if consistent:
            fractions.append(both / consistent)
    return np.mean(fractions) if fractions else np.nan


def test_video_consistency_by_hand():
    truth = np.array([[[0, 0, 1, 1]], [[0, 0, 1, 2]], [[0, 1, 1, 2]]])  # [F=3, H=1, W=4]
    prediction = np.array([[[0, 1, 1, 0]], [[0, 1, 2, 0]], [[1, 1, 2, 5]]])
    # frames 0-1: truth constant at pixels 0,1,2; prediction constant at 0,1,3 -> 2/3
    # frames 1-2: truth constant at pixels 0,2,3; prediction constant at 1,2 -> 1/3
    assert video_consistency(prediction, truth, 2) == pytest.approx(0.5)
    # n = 3 (and n = 5 > F: one window of all 3 frames): truth constant at 0 and 2, prediction at 1 -> 0
    assert video_consistency(prediction, truth, 3) == 0.0
    assert video_consistency(prediction, truth, 5) == 0.0
    # ignoring pixel 2 in frame 2 leaves pixels 0 and 3 in the second window, neither predicted constantly
    ignore = np.zeros(truth.shape, bool)
    ignore[2, 0, 2] = True
    assert video_consistency(prediction, truth, 2, ignore) == pytest.approx((2 / 3 + 0) / 2)
    # the prediction is compared with itself, not with the truth
    assert video_consistency(truth + 7, truth, 2) == 1.0
    changing = np.arange(3).reshape(3, 1, 1).repeat(4, axis=2)
    assert np.isnan(video_consistency(prediction, changing, 2))


def test_video_consistency_against_loops_and_errors():
    rng = np.random.default_rng(4)
    truth, prediction = rng.integers(0, 2, (10, 5, 6)), rng.integers(0, 2, (10, 5, 6))
    truth[:, :2] = 1  # some pixels consistent over every window
    ignore = rng.random(truth.shape) < 0.05
    for window in (2, 3, 8, 16):
        assert video_consistency(prediction, truth, window, ignore) == pytest.approx(
            brute_vc(prediction, truth, window, ignore))
    with pytest.raises(ValueError, match="window must be >= 2"):
        video_consistency(prediction, truth, 1)
    with pytest.raises(ValueError, match="F >= 2"):
        video_consistency(prediction[:1], truth[:1], 2)


def test_pointing_accuracy_by_hand():
    maps = np.zeros((3, 2, 2))
    masks = np.zeros((3, 4, 4), bool)  # each map cell covers 2x2 pixels
    maps[0, 0, 1] = 1.0
    masks[0, 1, 3] = True  # inside cell (0, 1): hit
    maps[1, 0] = 5.0  # tie between cells (0, 0) and (0, 1): the first wins
    masks[1, 0, 2] = True  # inside cell (0, 1) only: miss
    maps[2, 1, 1] = 1.0  # frame 2 has an empty mask: not counted
    assert pointing_accuracy(maps, masks) == 0.5
    assert np.isnan(pointing_accuracy(maps, np.zeros((3, 4, 4), bool)))
    with pytest.raises(ValueError, match="whole multiple"):
        pointing_accuracy(maps, np.zeros((3, 5, 4), bool))
    with pytest.raises(ValueError, match="same F"):
        pointing_accuracy(maps, masks[:2])


def test_pointing_accuracy_against_loops():
    rng = np.random.default_rng(5)
    maps, masks = rng.integers(0, 3, (20, 3, 4)).astype(float), rng.random((20, 6, 12)) < 0.08
    masks[3] = False
    hits = []
    for frame_map, mask in zip(maps, masks):
        if not mask.any():
            continue
        pixels = upsample_nearest(frame_map, 6, 12)
        y, x = np.unravel_index(np.argmax(pixels), pixels.shape)  # first maximal pixel lies in the first tied cell
        cell_y, cell_x = y // 2, x // 3
        hits.append(any(mask[yy, xx] for yy in range(6) for xx in range(12) if yy // 2 == cell_y and xx // 3 == cell_x))
    assert pointing_accuracy(maps, masks) == pytest.approx(np.mean(hits))


def test_binary_segmentation_scores_by_hand():
    frame_map = np.array([[[0.0, 1.0], [2.0, 3.0]]])  # normalised [0, 1/3, 2/3, 1], mean 1/2 -> bottom row
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 2:, :2] = True
    mask[0, 0, 0] = True
    # predicted foreground: rows 2-3 (8 px); true foreground: 5 px; foreground IoU 4/9, background IoU 7/12
    scores = binary_segmentation_scores(frame_map, mask)
    assert scores["miou"] == pytest.approx((4 / 9 + 7 / 12) / 2)
    assert scores["accuracy"] == pytest.approx(11 / 16)
    assert scores["miou_parity"] == pytest.approx(11 / 21)
    ignore = np.zeros_like(mask)
    ignore[0, 0, 0] = True  # the one false negative; the 4 false positives (rows 2-3, columns 2-3) stay
    assert binary_segmentation_scores(frame_map, mask, ignore)["accuracy"] == pytest.approx(11 / 15)
    empty = binary_segmentation_scores(np.ones((2, 2, 2)), np.zeros((2, 4, 4), bool))  # constant map, no object
    assert empty == {"miou": 1.0, "accuracy": 1.0, "miou_parity": 1.0}
    with pytest.raises(ValueError, match=r"mask bool \[F, H, W\]"):
        binary_segmentation_scores(frame_map, mask.astype(int))


def test_binary_segmentation_scores_against_sklearn():
    rng = np.random.default_rng(6)
    maps, masks = rng.random((4, 3, 5)), rng.random((4, 6, 10)) < 0.3
    ignore = rng.random(masks.shape) < 0.1
    prediction = upsample_nearest(np.stack([binarize_at_mean(m) for m in maps]), 6, 10)
    scores = binary_segmentation_scores(maps, masks, ignore)
    t, p = masks[~ignore], prediction[~ignore]
    assert scores["miou"] == pytest.approx(sk.jaccard_score(t, p, average="macro"))
    assert scores["accuracy"] == pytest.approx(sk.accuracy_score(t, p))
    one_frame = binary_segmentation_scores(maps[:1], masks[:1])
    assert one_frame["miou"] == pytest.approx(foreground_background_miou(prediction[0], masks[0]))
