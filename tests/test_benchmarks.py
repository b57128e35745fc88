"""Smoke test of the shapes benchmark script (its full runs are outside CI)."""

from __future__ import annotations

import json

import numpy as np
import torch

from vidinterp.datasets.scoring import ALL_METRICS
from vidinterp.testing.planted import planted_families

from benchmark_scripts import load_benchmark


def load_script():
    return load_benchmark("shapes.py")


def test_benchmark_writes_a_table_with_every_method_and_the_random_baseline(tmp_path):
    out = tmp_path / "smoke"
    threads = str(torch.get_num_threads())  # the script sets torch's thread count; keep the suite's
    assert load_script().main(["--untrained", "--clips", "4", "--calibration-clips", "1", "--threads", threads,
                               "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert {"cross_attention", "concept_attention+softmax", "gramcol_all_layers", "gramcol+layer_sel",
            "imap(top2_chi)", "imap(random2)+softmax", "random maps (baseline)"} <= set(rows)
    for name, row in rows.items():
        assert set(row) == set(ALL_METRICS), name
        assert 0.0 <= row["object_miou"] <= 1.0 and 0.0 <= row["auroc_2obj"] <= 1.0
    assert result["counts"]["auroc_2obj"] > 0 and np.isfinite(result["best_auroc"])
    table = out.with_suffix(".md").read_text()
    # header and one row per method, then the tracking table's header and rows
    assert table.count("\n| ") == len(rows) + 1 + len(result["tracking"]["rows"]) + 1
    assert "random maps (baseline)" in table and "QK-peak pointing" in table


def load_training_script():
    return load_benchmark("train_shapes.py")


def test_object_weights_cover_each_object_and_a_two_pixel_margin():
    from vidinterp.datasets.shapes import ShapeObject, render_clip

    train = load_training_script()
    objects = [ShapeObject(shape="circle", color="red", size=6, position=(3.5, 8.0), direction="right", speed=2.0),
               ShapeObject(shape="triangle", color="blue", size=5, position=(12.0, 12.0))]  # one at the border
    clip = render_clip(objects, num_frames=3, height=16, width=16)
    weights = train.object_weights([clip], 3.0).numpy()
    assert weights.shape == (1, 3, 1, 16, 16)
    mask = clip.masks.any(axis=0)
    near = np.zeros_like(mask)
    for f, r, c in zip(*np.nonzero(mask)):  # brute force: every pixel within Chebyshev distance 2
        near[f, max(0, r - 2):r + 3, max(0, c - 2):c + 3] = True
    np.testing.assert_array_equal(weights[0, :, 0], np.where(near, 3.0, 1.0))


def test_timestep_sampling_stays_in_range_and_logit_normal_favours_mid_noise():
    train = load_training_script()
    uniform = train.sample_timesteps(20_000, 1000, "uniform", torch.Generator().manual_seed(0))
    logit = train.sample_timesteps(20_000, 1000, "logit-normal", torch.Generator().manual_seed(0))
    for t in (uniform, logit):
        assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    mid = lambda t: float(((t >= 250) & (t < 750)).float().mean())
    assert abs(mid(uniform) - 0.5) < 0.02
    # P(|N(0, 1)| < logit(0.75) = 1.0986) = 0.7281
    assert abs(mid(logit) - 0.728) < 0.02


def test_planted_benchmark_writes_the_table_of_known_answers(tmp_path, monkeypatch):
    module = load_benchmark("planted.py")
    monkeypatch.setattr("sys.argv", ["planted.py", "--out", str(tmp_path / "planted")])
    module.main()
    result = json.loads((tmp_path / "planted.json").read_text())
    assert set(result) == set(planted_families())
    for family, answers in result.items():
        assert {row["resolution"] for row in answers["maps"]} == {"token", "pixel"}
        assert all(row["pointing"] == 1.0 and row["worst_iou"] >= 0.9 for row in answers["maps"]), family
        assert answers["motion_rank"] in (1, None)
        roles = {role: answers["lambda2"][layer] for layer, role in answers["roles"].items()}
        assert roles["identity"] > 0.95 and roles["uniform"] < 0.05
    rows = sum(len(answers["maps"]) for answers in result.values())
    # the map rows, then the second table's header and one row per family
    assert (tmp_path / "planted.md").read_text().count("\n| ") == rows + 1 + len(result)
