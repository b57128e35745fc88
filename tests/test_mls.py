"""MLS rendering and scoring (``vidinterp.evaluation.mls``): exact pixels of tiny renderings worked
out by hand, PIL's bilinear upscaling as an oracle, and a scripted judge."""

from __future__ import annotations

import io
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from vidinterp.evaluation.judge import JudgeReplyError
from vidinterp.evaluation.mls import (CRITERIA, judge_prompt, motion_localisation_score, render_mls_grids,
                                      sample_frames)

INFERNO = np.round(matplotlib.colormaps["inferno"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def tile(grid, k, height, width, cols=3):
    """Tile ``k`` (row-major) of a grid of ``height x width`` tiles."""
    row, col = divmod(k, cols)
    return grid[row * height:(row + 1) * height, col * width:(col + 1) * width]


def test_sample_frames():
    # floor(linspace(0, 48, 12)): 4.36 -> 4, 8.73 -> 8, 13.09 -> 13, ...
    np.testing.assert_array_equal(sample_frames(49), [0, 4, 8, 13, 17, 21, 26, 30, 34, 39, 43, 48])
    np.testing.assert_array_equal(sample_frames(12), np.arange(12))
    np.testing.assert_array_equal(sample_frames(5), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # fewer frames repeat
    np.testing.assert_array_equal(sample_frames(1, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="num_frames >= 1"):
        sample_frames(0)


def test_square_map_overlay_heatmap_and_tile_order():
    rng = np.random.default_rng(0)
    frames = rng.integers(2, 256, (12, 8, 8, 3), dtype=np.uint8)  # >= 2, so halving changes every pixel
    saliency = np.zeros((12, 8, 8))
    saliency[7, 2:5, 3:6] = 1.0  # a square in frame 7; every other map is constant
    grids = render_mls_grids(frames, saliency)
    assert grids.raw.shape == grids.overlay.shape == grids.heatmap.shape == (32, 24, 3)
    assert grids.raw.dtype == grids.overlay.dtype == grids.heatmap.dtype == np.uint8
    for k in range(12):  # 4 rows x 3 columns in time order: frame 7 is row 2, column 1
        np.testing.assert_array_equal(tile(grids.raw, k, 8, 8), frames[k])
    square = (slice(16 + 2, 16 + 5), slice(8 + 3, 8 + 6))
    expected = grids.raw // 2  # below the mean: darkened (a constant map is below its mean everywhere)
    expected[square] = grids.raw[square]
    np.testing.assert_array_equal(grids.overlay, expected)
    assert ((grids.overlay != grids.raw).any(axis=-1) == (expected != grids.raw).any(axis=-1)).all()
    heat = np.broadcast_to(INFERNO[0], grids.heatmap.shape).copy()
    heat[square] = INFERNO[255]
    np.testing.assert_array_equal(grids.heatmap, heat)


def test_bilinear_upsampling_by_hand_and_against_pil():
    frames = np.full((12, 4, 4, 3), 100, np.uint8)
    saliency = np.tile(np.array([[0.0, 1.0], [2.0, 3.0]]), (12, 1, 1))
    grids = render_mls_grids(frames, saliency)
    # half-pixel centres, clamped: output pixel i samples input (i + 0.5) / 2 - 0.5 -> 0, .25, .75, 1
    axis = np.array([0.0, 0.25, 0.75, 1.0])
    continuous = (2 * axis[:, None] + axis[None, :]) / 3  # normalised map [[0, 1], [2, 3]] / 3
    np.testing.assert_array_equal(tile(grids.heatmap, 0, 4, 4), INFERNO[np.floor(continuous * 255).astype(int)])
    pil = np.asarray(Image.fromarray((saliency[0] / 3).astype(np.float32), mode="F").resize((4, 4), Image.BILINEAR))
    np.testing.assert_allclose(continuous, pil, atol=1e-6)
    # mean 0.5: above it are row 2, columns 1-3 (2 * .75 + x > 1.5) and all of row 3
    above = np.zeros((4, 4), bool)
    above[2, 1:] = above[3] = True
    np.testing.assert_array_equal(tile(grids.overlay, 5, 4, 4)[..., 0], np.where(above, 100, 50))


def test_tile_order_with_more_frames_pngs_and_tile_height():
    frames = np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1) * np.ones((1, 6, 9, 3), np.uint8)  # frame k is k
    grids = render_mls_grids(frames, np.random.default_rng(1).random((24, 2, 3)))
    np.testing.assert_array_equal(grids.frame_indices, sample_frames(24))
    for k, index in enumerate(grids.frame_indices):
        assert (tile(grids.raw, k, 6, 9) == index).all()
    for image, png in zip((grids.raw, grids.overlay, grids.heatmap), grids.pngs()):
        assert png.startswith(b"\x89PNG")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    small = render_mls_grids(frames, np.zeros((24, 2, 3)), tile_height=3)
    assert small.raw.shape == (12, 3 * 5, 3)  # 6x9 frames -> 3 x round(4.5) tiles
    assert (tile(small.raw, 11, 3, 5) == 23).all()


def test_render_rejects_bad_input():
    frames, saliency = np.zeros((12, 4, 4, 3), np.uint8), np.zeros((12, 2, 2))
    with pytest.raises(ValueError, match=r"uint8 \[F, H, W, 3\]"):
        render_mls_grids(frames.astype(float), saliency)
    with pytest.raises(ValueError, match="F = 12"):
        render_mls_grids(frames, saliency[:6])
    with pytest.raises(ValueError, match="finite"):
        render_mls_grids(frames, np.full((12, 2, 2), np.nan))
    with pytest.raises(ValueError, match="rows \\* cols = 12"):
        render_mls_grids(frames, saliency, count=10)


def test_judge_prompt_names_everything():
    prompt = judge_prompt("a dog runs across the lawn", "runs")
    assert '"runs"' in prompt and "a dog runs across the lawn" in prompt and "4 rows by 3 columns" in prompt
    assert [c.key for c in CRITERIA] == ["SL", "TL", "PR", "SS", "OBJ"]
    assert all(f"{c.key} ({c.name})" in prompt for c in CRITERIA)


class ScriptedJudge:
    """Replies from a list, recording what it was asked."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def ask(self, prompt, images):
        self.calls.append((prompt, list(images)))
        return self.replies.pop(0)


def test_motion_localisation_score_maps_scores_and_keeps_replies():
    frames, saliency = np.zeros((12, 4, 4, 3), np.uint8), np.random.default_rng(2).random((12, 2, 2))
    fenced = 'Scores:\n```json\n{"SL": 5, "TL": 1, "PR": 3, "SS": 4, "OBJ": 2}\n```'
    judge = ScriptedJudge(["I think it is fine.", fenced])
    result = motion_localisation_score(frames, saliency, caption="a dog runs", concept="runs", judge=judge)
    assert result.raw_scores == {"SL": 5, "TL": 1, "PR": 3, "SS": 4, "OBJ": 2}
    assert result.scores == {"SL": 1.0, "TL": 0.0, "PR": 0.5, "SS": 0.75, "OBJ": 0.25}  # (s - 1) / 4
    assert result.average == pytest.approx(0.5)
    assert result.replies == ["I think it is fine.", fenced] and len(judge.calls) == 2
    prompt, images = judge.calls[0]
    assert prompt == judge_prompt("a dog runs", "runs") and len(images) == 3
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert result.to_dict()["frame_indices"] == list(range(12))
    with pytest.raises(JudgeReplyError, match=r'3 requests.*"SL": 7'):
        motion_localisation_score(frames, saliency, caption="c", concept="x",
                                  judge=ScriptedJudge(['{"SL": 7, "TL": 1, "PR": 1, "SS": 1, "OBJ": 1}'] * 3))
