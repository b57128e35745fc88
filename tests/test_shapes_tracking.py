"""The shapes benchmark's point-tracking rows: vidinterp.track against the clips' exact tracks,
with a random-track and a zero-motion baseline (PCK at 8 px, TAP-Vid delta_avg)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def shapes():
    return load_benchmark("shapes.py")


def test_track_metrics_of_exact_and_still_tracks(shapes):
    from vidinterp.datasets.shapes import ShapeObject, render_clip

    objects = [ShapeObject(shape="circle", color="red", size=8, position=(10.0, 16.0), direction="right", speed=3.0),
               ShapeObject(shape="square", color="blue", size=8, position=(24.0, 8.0))]
    clip = render_clip(objects, num_frames=6, height=32, width=32)
    truth = clip.tracks.astype(np.float64) + 0.5
    assert shapes.track_metrics(clip, truth) == {"pck_8px": 1.0, "delta_avg": 1.0}
    still = shapes.track_metrics(clip, np.repeat(truth[:, :1], 6, axis=1))
    # the static square is exact; the circle is 3 px off per frame: within 8 px at frames 1 and 2 only,
    # and at 256x256 (x 8) 24 px or more off, beyond every TAP-Vid threshold (16 px at most)
    assert still["pck_8px"] == pytest.approx((5 + 2) / 10)
    assert still["delta_avg"] == pytest.approx(5 / 10)


def test_benchmark_writes_tracking_rows_with_both_baselines(shapes, tmp_path):
    out = tmp_path / "smoke"
    threads = str(torch.get_num_threads())  # the script sets torch's thread count; keep the suite's
    assert shapes.main(["--untrained", "--clips", "2", "--calibration-clips", "1", "--threads", threads,
                        "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    tracking = result["tracking"]
    rows = tracking["rows"]
    assert list(rows) == [shapes.TRACKER_ROW, shapes.RANDOM_TRACKS_ROW, shapes.ZERO_MOTION_ROW]
    for name, row in rows.items():
        assert set(row) == {"pck_8px", "delta_avg"}, name
        assert all(0.0 <= value <= 1.0 for value in row.values()), (name, row)
    assert tracking["clips"] == 2 and tracking["points"] == 3  # one-object clip, two-object clip
    assert {"layer", "step", "num_inference_steps", "layer_step_source"} <= set(tracking)

    # the zero-motion baseline, recomputed here from the same held-out clips
    clips = shapes.heldout_clips(2, shapes.build_shapes_pipeline(shapes.ShapesModelConfig()).shapes_config)
    expected = [shapes.track_metrics(clip, np.repeat(clip.tracks[:, :1] + 0.5, clip.num_frames, axis=1))
                for clip in clips]
    for metric in ("pck_8px", "delta_avg"):
        assert rows[shapes.ZERO_MOTION_ROW][metric] == pytest.approx(np.mean([e[metric] for e in expected]))
    assert rows[shapes.RANDOM_TRACKS_ROW] != rows[shapes.ZERO_MOTION_ROW]

    table = out.with_suffix(".md").read_text()
    assert "| tracker | PCK@8px | delta_avg |" in table
    for name in rows:
        assert f"\n| {name} | " in table
