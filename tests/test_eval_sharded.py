"""`vidinterp eval` split over two CPU processes (torchrun, gloo through accelerate.PartialState)
gives exactly the table of one process, each rank evaluating its own clips."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slow

METHODS = ["cross_attention", "gramcol_all_layers"]


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _arguments(data, out) -> list[str]:
    return ["eval", "shapes", "--data", str(data), "--model", "zoo:shapes", "--methods", *METHODS, "--out", str(out),
            "--bootstrap", "300", "--no-progress", "--cpu"]


def test_two_process_run_equals_one_process_run(tmp_path):
    from vidinterp.datasets.shapes import clip_seed, generate_clip, write_dataset
    from vidinterp.zoo.shapes import ShapesModelConfig, train_clip_config

    config = ShapesModelConfig()
    clips = [generate_clip(train_clip_config(config, (1, 1) if i % 2 else (2, 2)), clip_seed(5, i)) for i in range(3)]
    write_dataset(tmp_path / "data", clips)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port())]
    sharded = subprocess.run([*torchrun, "-m", "vidinterp", *_arguments(tmp_path / "data", tmp_path / "two")],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    from vidinterp.cli import main

    assert main(_arguments(tmp_path / "data", tmp_path / "one")) == 0  # one process: this one

    ranks = {path.stem: json.loads(path.read_text())["rank"] for path in (tmp_path / "two" / "clips").glob("*.json")}
    assert ranks == {"clip_00000": 0, "clip_00001": 1, "clip_00002": 0}
    for name in ("table.md", "table.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert "3 clips scored, 0 errors" in (tmp_path / "one" / "table.md").read_text()
    with xr.open_zarr(tmp_path / "two" / "scores.zarr") as two, xr.open_zarr(tmp_path / "one" / "scores.zarr") as one:
        np.testing.assert_array_equal(two["score"].values, one["score"].values)
        assert np.isfinite(one["score"].sel(metric="object_miou").values).all()


def test_two_process_runs_equal_one_process_runs_in_every_real_layout(tmp_path):
    """Every reader's fixture layout (one corrupt clip each): sharded over two processes, the table
    (scores, intervals, clip and error counts) and the per-clip scores equal one process's."""
    from eval_layouts_driver import LAYOUTS, arguments
    from vidinterp.cli import main
    from vidinterp.testing.dataset_layouts import write_fixture

    paths = {name: str(write_fixture(name, tmp_path / "data" / name, corrupt_clip=True)) for name in LAYOUTS}
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    driver = os.path.join(os.path.dirname(__file__), "eval_layouts_driver.py")
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                              str(_free_port()), driver, str(tmp_path / "paths.json"), str(tmp_path / "two")],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    for name in LAYOUTS:
        assert main(arguments(name, paths[name], tmp_path / "one")) == 0
        two, one = tmp_path / "two" / name, tmp_path / "one" / name
        ranks = {json.loads(path.read_text())["rank"] for path in (two / "clips").glob("*.json")}
        assert ranks == {0, 1}, name
        for table in ("table.md", "table.csv"):
            assert (two / table).read_text() == (one / table).read_text(), name
        assert "clips scored, 1 errors" in (one / "table.md").read_text(), name
        with xr.open_zarr(two / "scores.zarr") as sharded_scores, xr.open_zarr(one / "scores.zarr") as single:
            np.testing.assert_array_equal(sharded_scores["score"].values, single["score"].values)
