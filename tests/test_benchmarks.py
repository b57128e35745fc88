"""Smoke test of the shapes benchmark script (its full runs are outside CI)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from vidinterp.datasets.scoring import ALL_METRICS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes.py"


def load_script():
    spec = importlib.util.spec_from_file_location("shapes_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert table.count("\n| ") == len(rows) + 1  # header and one row per method
    assert "random maps (baseline)" in table and "QK-peak pointing" in table
