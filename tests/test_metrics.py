"""Map scores of ``vidinterp.metrics`` against scikit-learn's implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import jaccard_score, roc_auc_score

from vidinterp.metrics import auroc, binarize_at_mean, foreground_background_miou, iou, upsample_nearest


@pytest.mark.parametrize("levels", [None, 4])  # continuous scores, and many ties
def test_auroc_matches_sklearn(levels):
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200)
    if levels:
        positive, negative = np.round(positive * levels) / levels, np.round(negative * levels) / levels
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    expected = roc_auc_score(labels, np.r_[positive, negative])
    assert auroc(positive, negative) == pytest.approx(expected, rel=1e-12)
    assert auroc(np.zeros(3), np.zeros(5)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auroc(positive, np.array([]))


def test_iou_and_miou_match_sklearn():
    rng = np.random.default_rng(1)
    prediction, truth = rng.random((16, 16)) > 0.6, rng.random((16, 16)) > 0.7
    assert iou(prediction, truth) == pytest.approx(jaccard_score(truth.ravel(), prediction.ravel()))
    expected = jaccard_score(truth.ravel(), prediction.ravel(), average="macro")
    assert foreground_background_miou(prediction, truth) == pytest.approx(expected)
    assert iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0


def test_binarize_at_mean_and_upsample():
    frame = np.array([[0.0, 1.0], [3.0, 4.0]])
    np.testing.assert_array_equal(binarize_at_mean(frame), frame > frame.mean())
    assert not binarize_at_mean(np.full((2, 2), 7.0)).any()
    pixels = upsample_nearest(np.arange(4.0).reshape(1, 2, 2), 4, 6)
    assert pixels.shape == (1, 4, 6) and (pixels[0, :2, :3] == 0).all() and (pixels[0, 2:, 3:] == 3).all()
    with pytest.raises(ValueError, match="multiple"):
        upsample_nearest(frame, 5, 4)
