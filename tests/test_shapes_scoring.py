"""Tests of the ground-truth scores of concept maps (vidinterp.datasets.scoring)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vidinterp.datasets.scoring import ALL_METRICS, naming, score_maps
from vidinterp.datasets.shapes import ShapeObject, render_clip

CELL = 4  # pixels per map cell of the coarse maps


@pytest.fixture(scope="module")
def clip():
    """A red square moving right during frames 2-5 and a static blue circle, 32x32, 8 frames."""
    return render_clip(
        [ShapeObject("square", "red", 8, (8.0, 8.0), direction="right", speed=2.0, motion_frames=(2, 6)),
         ShapeObject("circle", "blue", 8, (22.0, 24.0))],
        num_frames=8, height=32, width=32,
    )


def test_naming(clip):
    assert naming(clip, "red").tolist() == [True, False]
    assert naming(clip, "circle").tolist() == [False, True]
    assert naming(clip, "right").tolist() == [True, False]
    assert naming(clip, "left").tolist() == [False, False]


def test_maps_equal_to_the_masks_score_perfectly_and_swapped_maps_score_zero(clip):
    """Maps on the pixel grid (one cell per pixel) that are the ground-truth masks."""
    concepts = ["square", "blue", "right"]
    truth = np.stack([clip.concept_mask("square"), clip.concept_mask("blue"), clip.masks[0]]).astype(float)
    scores = score_maps(clip, concepts, truth)
    assert set(scores) == set(ALL_METRICS)
    assert scores["object_miou"] == [1.0, 1.0]
    assert scores["auroc_2obj"] == [1.0, 1.0, 1.0]
    assert scores["auroc_noun"] == [1.0] and scores["auroc_color"] == [1.0] and scores["auroc_direction"] == [1.0]
    swapped = score_maps(clip, concepts, truth[[1, 0, 1]])
    assert swapped["auroc_2obj"] == [0.0, 0.0, 0.0]
    assert max(swapped["object_miou"]) < 0.5


def test_scores_match_brute_force_formulas(clip):
    """Random maps: every sample equals a direct computation with scikit-learn's AUROC and
    explicit pixel loops."""
    rng = np.random.default_rng(3)
    concepts = ["red", "circle", "right"]
    maps = rng.random((3, 8, 8, 8))
    scores = score_maps(clip, concepts, maps)
    pixels = maps.repeat(CELL, axis=2).repeat(CELL, axis=3)

    def binarised(frame: np.ndarray) -> np.ndarray:
        norm = (frame - frame.min()) / (frame.max() - frame.min())
        return norm > norm.mean()

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        union = (a | b).sum()
        return (a & b).sum() / union if union else 1.0

    expected_miou = []
    for c, word in enumerate(concepts[:2]):
        region = clip.concept_mask(word)
        expected_miou.append(np.mean([(iou(binarised(pixels[c, f]), region[f]) + iou(~binarised(pixels[c, f]), ~region[f])) / 2
                                      for f in range(8)]))
    np.testing.assert_allclose(scores["object_miou"], expected_miou)

    motion = clip.concept_mask("right")
    moving_frames = [f for f in range(8) if motion[f].any()]
    assert moving_frames == [2, 3, 4, 5]
    np.testing.assert_allclose(scores["motion_iou"], [np.mean([iou(binarised(pixels[2, f]), motion[f]) for f in moving_frames])])

    shifted = pixels[2] - pixels[2].min()
    per_frame = shifted.mean(axis=(1, 2))
    on, off = per_frame[2:6].mean(), np.r_[per_frame[:2], per_frame[6:]].mean()
    np.testing.assert_allclose(scores["temporal"], [on / (on + off)])

    expected_auroc = []
    for c, named in enumerate([0, 1, 0]):
        other = 1 - named
        per_frame_auroc = []
        for f in range(8):
            pos, neg = pixels[c, f][clip.masks[named, f]], pixels[c, f][clip.masks[other, f]]
            labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            per_frame_auroc.append(roc_auc_score(labels, np.r_[pos, neg]))
        expected_auroc.append(np.mean(per_frame_auroc))
    np.testing.assert_allclose(scores["auroc_2obj"], expected_auroc)
    np.testing.assert_allclose(scores["auroc_color"] + scores["auroc_noun"] + scores["auroc_direction"], expected_auroc)


def test_one_object_clips_have_no_auroc_and_absent_words_name_nothing():
    single = render_clip([ShapeObject("triangle", "green", 8, (8.0, 8.0))], num_frames=4, height=16, width=16)
    scores = score_maps(single, ["triangle", "purple"], np.ones((2, 4, 4, 4)))
    assert scores["auroc_2obj"] == [] and scores["motion_iou"] == [] and scores["temporal"] == []
    assert len(scores["object_miou"]) == 2


def test_mis_shaped_maps_are_rejected(clip):
    with pytest.raises(ValueError, match=r"maps must be \[concepts=2, frames=8, h, w\]; got \(2, 7, 8, 8\)"):
        score_maps(clip, ["red", "blue"], np.zeros((2, 7, 8, 8)))
