"""Smoke test of the tracing-overhead benchmark (``benchmarks/overhead.py --quick``; the full run
is outside CI, its tables are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
SINGLE_ANALYSES = {"cross_attention", "concept_attention", "gramcol", "imap", "qk_matching", "separation", "lambda2"}


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("overhead") / "overhead_quick.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert out.with_suffix(".md").exists()
    return json.loads(out.read_text())


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_configuration_at_both_sizes_and_batches(result):
    rows = result["rows"]
    main = {(row["size"], row["batch"], row["config"]) for row in rows if row["table"] == "main"}
    configs = {"plain", "sites", "concepts", "four_maps", "default"} | SINGLE_ANALYSES
    for size in ("tiny", "cogvideox"):
        for batch in (1, 2):
            missing = {config for config in configs if (size, batch, config) not in main}
            assert not missing, (size, batch, missing)
    scaling = {(row["visual_tokens"], row["config"]) for row in rows if row["table"] == "scaling"}
    assert {config for _, config in scaling} == {"plain", "sites", "concepts", "four_maps", "default"}
    steps = {(row["steps"], row["config"]) for row in rows if row["table"] == "steps"}
    assert len({count for count, _ in steps}) >= 2 and {config for _, config in steps} == {"plain", "default"}


def test_ratios_are_positive_and_finite_and_outputs_bitwise_equal(result):
    for row in result["rows"]:
        label = (row["table"], row["size"], row["batch"], row["steps"], row["config"])
        assert row["error"] is None, (label, row["error"])
        assert row["rounds"] >= 1, label
        assert _finite_positive(row["wall_ratio"]["median"]) and _finite_positive(row["cpu_ratio"]["median"]), label
        assert _finite_positive(row["wall_ratio"]["min"]) and row["wall_ratio"]["min"] <= row["wall_ratio"]["max"]
        assert _finite_positive(row["memory_ratio"]) and _finite_positive(row["peak_bytes"]), label
        assert row["bitwise_equal"] is True, label
        assert row["analysed"] is True, label
        if row["config"] == "plain":
            assert row["wall_ratio"]["median"] == 1.0 and row["memory_ratio"] == 1.0


def test_targets_table_and_profile(result):
    targets = result["targets"]
    names = " ".join(target["target"] for target in targets)
    for needle in ("four_maps time <= 1.02x", "default time <= 1.02x", "four_maps time <= 1.1x",
                   "default time <= 1.1x", "peak memory <= 1.02x", "grow with steps", "lambda2 time <= 2.0x"):
        assert needle in names, needle
    for target in targets:
        assert isinstance(target["met"], bool) and _finite_positive(target["value"]), target
        assert target["met"] == (target["value"] <= target["threshold"])
    profile = result["profile"]
    assert profile["config"] == "default" and profile["top_operators"]
    assert any(name.startswith("vidinterp.analysis.") for name in profile["regions_ms"])
    assert result["meta"]["quick"] is True
