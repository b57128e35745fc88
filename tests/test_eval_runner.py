"""The evaluation runner (vidinterp.evaluation): fitting rule, shapes records, shapes task,
resume after a crash, error results, bootstrap intervals, tables and per-clip files, and the
`vidinterp eval` command's user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import vidinterp
import vidinterp.testing
from vidinterp.datasets.records import ClipRecord
from vidinterp.datasets.scoring import score_maps
from vidinterp.datasets.shapes import clip_seed, generate_clip, write_dataset
from vidinterp.datasets.shapes_source import ShapesSource, ground_truth
from vidinterp.evaluation.aggregate import aggregate, bootstrap_intervals, write_outputs
from vidinterp.evaluation.fitting import fit_record
from vidinterp.evaluation.runner import evaluate, read_result, read_results, result_path
from vidinterp.evaluation.tasks import get_task

METHODS = ["cross_attention", "gramcol_all_layers+softmax"]


@pytest.fixture(scope="module")
def pipe():
    return vidinterp.zoo.load("shapes")


@pytest.fixture(scope="module")
def clips(pipe):
    from vidinterp.zoo.shapes import train_clip_config

    config = pipe.shapes_config
    return [generate_clip(train_clip_config(config, (1, 1) if i % 2 else (2, 2)), clip_seed(11, i)) for i in range(4)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, clips):
    """Four shapes clips on disk; the last one's video is corrupt."""
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, clips)
    (root / "videos" / "clip_00003.mp4").write_bytes(b"not a video")
    return root


# ------------------------------------------------------------------ fitting rule
def _record(frames: int = 5, height: int = 8, width: int = 12) -> ClipRecord:
    masks = np.zeros((1, frames, height, width), dtype=bool)
    masks[0, 2, 2:4, 4:6] = True
    tracks = np.array([[[6.0, 4.0]] * frames, [[1.0, 4.0]] * frames], dtype=np.float32)
    return ClipRecord("test", "clip", np.full((frames, height, width, 3), 7, np.uint8), masks, (1,), ("thing",),
                      "a thing", ("thing",), {"thing": (1,)}, tracks=tracks)


def test_fit_record_picks_frames_and_resamples_masks_nearest_and_tracks_through_the_crop():
    fitted = fit_record(_record(), (3, 4, 4), "crop")  # centre crop to columns 2..9, then 8x8 -> 4x4
    assert fitted.attrs["frame_index"] == [0, 2, 4]
    assert fitted.frames.shape == (3, 4, 4, 3) and (fitted.frames == 7).all()
    expected = np.zeros((1, 3, 4, 4), dtype=bool)
    expected[0, 1, 1, 1] = True  # source pixel centres rows 1,3,5,7 and columns 3,5,7,9: only (3, 5) is inside
    np.testing.assert_array_equal(fitted.masks, expected)
    np.testing.assert_allclose(fitted.tracks[0], [[2.0, 2.0]] * 3)  # ((6 - 2) / 2, 4 / 2)
    assert fitted.visible[0].all() and not fitted.visible[1].any()  # x = 1 is cut off by the crop
    assert fit_record(fitted, (3, 4, 4)) is fitted


def test_fit_record_pad_marks_the_bars_ignored_and_empty():
    fitted = fit_record(_record(), (3, 8, 8), "pad")  # 8x12 -> 5x8 placed at rows 1..5
    assert fitted.ignore[:, 0].all() and fitted.ignore[:, 6:].all() and not fitted.ignore[:, 1:6].any()
    assert not fitted.masks[..., 0, :].any()
    longer = fit_record(_record(), (7, 4, 4))  # a shorter clip repeats frames, nearest in time
    assert longer.attrs["frame_index"] == [0, 1, 1, 2, 3, 3, 4]
    assert longer.masks[0, 3].any() and not longer.masks[0, 2].any()
    with pytest.raises(ValueError, match="every size must be a positive integer"):
        fit_record(_record(), (0, 4, 4))


# ------------------------------------------------------------------ shapes records and task
def test_shapes_source_reads_the_folder_like_the_clips_in_memory(dataset, clips):
    on_disk, in_memory = ShapesSource(dataset), ShapesSource.from_clips(clips)
    assert on_disk.clip_ids() == in_memory.clip_ids() == [f"clip_{i:05d}" for i in range(4)]
    a, b = on_disk.load("clip_00000"), in_memory.load("clip_00000")
    np.testing.assert_array_equal(a.masks, clips[0].masks)
    assert a.concept_masks == b.concept_masks and a.concepts == tuple(clips[0].concepts)
    np.testing.assert_allclose(a.tracks, clips[0].tracks + 0.5)
    assert np.abs(a.frames.astype(int) - clips[0].frames).max() <= 2  # lossless-ish mp4
    truth = ground_truth(b)
    for word in clips[0].concepts:  # direction words: only the frames where the object moves
        np.testing.assert_array_equal(truth.concept_mask(word), clips[0].concept_mask(word))
    with pytest.raises(vidinterp.datasets.records.DatasetLayoutError, match="clip_00003.mp4"):
        on_disk.load("clip_00003")
    with pytest.raises(vidinterp.datasets.records.DatasetLayoutError, match="manifest.json"):
        ShapesSource(dataset / "videos")


def test_shapes_task_scores_as_score_maps_on_token_maps(pipe, clips):
    record = ShapesSource.from_clips(clips).load("clip_00000")
    task = get_task("shapes")
    trace = vidinterp.trace(pipe, video=record.frames, prompt=record.caption, concepts=list(record.concepts),
                            analyses=["cross_attention"], seed=0)
    scored = task.score_trace(record, trace, ["cross_attention"])
    expected = score_maps(clips[0], clips[0].concepts, trace.maps["cross_attention"].values)
    assert scored.samples["cross_attention"] == expected
    assert scored.scores()["cross_attention"]["object_miou"] == pytest.approx(np.mean(expected["object_miou"]))


# ------------------------------------------------------------------ runner: resume and errors
class Counting:
    """vidinterp.trace, counting calls; raises KeyboardInterrupt on call number ``crash_at``."""

    def __init__(self, crash_at: int | None = None):
        self.calls, self.crash_at, self.trace = 0, crash_at, vidinterp.trace

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed mid-run")
        return self.trace(*args, **kwargs)


def _stamp(path):
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_evaluate_resumes_without_redoing_clips_and_records_errors(pipe, dataset, tmp_path, monkeypatch):
    source = ShapesSource(dataset)
    options = {"seed": 0}
    first = Counting()
    monkeypatch.setattr(vidinterp, "trace", first)
    summary = evaluate("shapes", source, pipe, METHODS, tmp_path, limit=2, trace_options=options, progress=False)
    assert summary.done == ["clip_00000", "clip_00001"] and first.calls == 2
    stamps = {clip: _stamp(result_path(tmp_path, clip)) for clip in summary.done}

    crashing = Counting(crash_at=1)  # the process dies while tracing clip 2
    monkeypatch.setattr(vidinterp, "trace", crashing)
    with pytest.raises(KeyboardInterrupt):
        evaluate("shapes", source, pipe, METHODS, tmp_path, trace_options=options, progress=False)
    assert not result_path(tmp_path, "clip_00002").exists()
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["clip_00000.json", "clip_00001.json"]

    resumed = Counting()
    monkeypatch.setattr(vidinterp, "trace", resumed)
    summary = evaluate("shapes", source, pipe, METHODS, tmp_path, trace_options=options, progress=False)
    assert summary.skipped == ["clip_00000", "clip_00001"] and summary.done == ["clip_00002", "clip_00003"]
    assert resumed.calls == 1 and summary.errors == ["clip_00003"]
    assert {clip: _stamp(result_path(tmp_path, clip)) for clip in stamps} == stamps

    error = read_result(result_path(tmp_path, "clip_00003"))
    assert error["status"] == "error" and error["error"].startswith("DatasetLayoutError: clip_00003")
    ok = read_result(result_path(tmp_path, "clip_00002"))
    for method in METHODS:
        for metric, values in ok["samples"][method].items():
            if values:
                assert ok["scores"][method][metric] == pytest.approx(np.nanmean(values))

    results = read_results(tmp_path)
    table = aggregate(results, resamples=200, seed=1)
    assert table.errors == ["clip_00003"] and "3 clips scored, 1 errors" in table.to_markdown()
    k = table.metrics.index("object_miou")
    expected = np.mean([r["scores"]["cross_attention"]["object_miou"] for r in results if r["status"] == "ok"])
    assert table.mean[0, k] == pytest.approx(expected) and table.clips[0, k] == 3


def test_evaluate_checks_arguments_before_any_clip(pipe, dataset, tmp_path):
    source = ShapesSource(dataset)
    with pytest.raises(ValueError, match="unknown benchmark 'shape'"):
        evaluate("shape", source, pipe, METHODS, tmp_path)
    with pytest.raises(ValueError, match=r"unknown map methods \['imapp'\]"):
        evaluate("shapes", source, pipe, ["imapp"], tmp_path)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        evaluate("shapes", source, pipe, METHODS, tmp_path, limit=0)
    assert not (tmp_path / "clips").exists()


# ------------------------------------------------------------------ aggregation
def test_bootstrap_matches_a_brute_force_loop_and_a_hand_computed_case():
    score = np.array([[0.0, 1.0], [1.0, np.nan], [5.0, 3.0]])  # 3 clips, 2 cells; cell 1 misses clip 1
    low, high = bootstrap_intervals(score, resamples=500, seed=3)
    draws = np.random.default_rng(3).integers(0, 3, size=(500, 3))
    for cell in range(2):
        means = [np.nanmean(score[d, cell]) if np.isfinite(score[d, cell]).any() else np.nan for d in draws]
        np.testing.assert_allclose([low[cell], high[cell]], np.nanquantile(means, [0.025, 0.975]))
    # two clips, 0 and 1: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    low, high = bootstrap_intervals(np.array([[0.0], [1.0]]), resamples=4000, seed=0)
    assert (low[0], high[0]) == (0.0, 1.0)
    low, high = bootstrap_intervals(np.array([[0.0], [1.0]]), resamples=4000, seed=0, confidence=0.4)
    assert (low[0], high[0]) == (0.5, 0.5)


def _result(clip: str, scores: dict, status: str = "ok") -> dict:
    return {"benchmark": "davis2017", "clip_id": clip, "status": status, "methods": ["imap", "gramcol"],
            "scores": scores}


def test_table_markdown_csv_and_lazy_per_clip_files(tmp_path):
    results = [_result("a", {"imap": {"miou": 0.5, "accuracy": 0.75}, "gramcol": {"miou": 0.25}}),
               _result("b", {"imap": {"miou": 0.7, "accuracy": 0.25}, "gramcol": {"miou": 0.75}}),
               _result("c", {}, status="error")]
    table = aggregate(results, resamples=100, seed=0)
    assert table.methods == ["imap", "gramcol"] and table.metrics == ["miou", "accuracy"]
    markdown = table.to_markdown().splitlines()
    assert markdown[0].startswith("davis2017: 2 clips scored, 1 errors")
    assert markdown[2:4] == ["| method | miou | accuracy |", "|---|---|---|"]
    assert markdown[4].startswith("| imap | 0.600 [0.500, 0.700] | 0.500 [0.250, 0.750] |")
    assert markdown[5].startswith("| gramcol | 0.500 [0.250, 0.750] | n/a |")
    assert markdown[-1] == "errors (1): c"
    rows = table.to_csv().splitlines()
    assert rows[0] == "method,metric,mean,ci_low,ci_high,clips"
    assert rows[1].startswith("imap,miou,0.600000,") and rows[4] == "gramcol,accuracy,,,,0"
    paths = write_outputs(table, tmp_path)
    before = paths["markdown"].read_text()
    lazy = xr.open_dataset(paths["netcdf"], chunks={}, engine="h5netcdf")
    assert lazy["score"].chunks is not None
    zarr = xr.open_zarr(paths["zarr"])
    for dataset in (lazy, zarr):
        assert dataset["score"].dims == ("clip", "variant", "metric")
        np.testing.assert_array_equal(dataset["score"].values, table.scores["score"].values)
        assert dataset["failed"].values.tolist() == [0, 0, 1]
    lazy.close()
    with pytest.raises(ValueError, match="result files of one benchmark"):
        aggregate(results + [{**results[0], "benchmark": "vspw"}])
    assert paths["markdown"].read_text() == before


# ------------------------------------------------------------------ the command
def test_eval_command_user_errors_are_one_line_with_status_2(tmp_path, capsys, dataset):
    from vidinterp.cli import main

    cases = [(["eval", "nope", "--data", str(dataset), "--out", str(tmp_path)], "unknown benchmark 'nope'"),
             (["eval", "shapes", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)], "does not exist"),
             (["eval", "shapes", "--data", str(dataset), "--out", str(tmp_path), "--limit", "0"], "--limit must be"),
             (["eval", "shapes", "--data", str(dataset), "--out", str(tmp_path), "--methods", "x"], "unknown map")]
    for argv, message in cases:
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("vidinterp: error:") and message in error and "\n" not in error


# ------------------------------------------------------------------ real dataset layouts
REAL = ["mevis", "davis2017", "vspw", "imagenet_seg", "voc2012", "tapvid_davis", "tapvid_kinetics"]


@pytest.fixture(scope="module")
def tiny():
    return vidinterp.testing.tiny_pipeline("cogvideox")


@pytest.mark.parametrize("name", REAL)
def test_real_layout_fixture_runs_and_counts_its_corrupt_clip(name, tiny, tmp_path):
    from vidinterp.datasets.sources import open_dataset
    from vidinterp.testing.dataset_layouts import write_fixture

    source = open_dataset(name, write_fixture(name, tmp_path / "data", corrupt_clip=True))
    methods = None if name.startswith("tapvid") else ["cross_attention"]
    summary = evaluate(name, source, tiny, methods, tmp_path / "out", progress=False,
                       trace_options={"num_inference_steps": 4, "renoise_step": 2} if methods else {})
    assert len(summary.errors) == 1 and len(summary.done) == len(source.clip_ids())
    table = aggregate(read_results(tmp_path / "out"), resamples=50)
    assert table.errors == summary.errors
    assert np.isfinite(table.mean).any(), table.to_markdown()
    assert json.loads(result_path(tmp_path / "out", summary.errors[0]).read_text())["error"].startswith(
        "DatasetLayoutError")


class ConstantJudge:
    """A judge that gives every criterion ``score`` (1..5) and counts its calls."""

    def __init__(self, score: int):
        self.score, self.calls = score, 0

    def ask(self, prompt: str, images) -> str:
        from vidinterp.evaluation.mls import CRITERIA

        self.calls += 1
        self.reply = json.dumps({criterion.key: self.score for criterion in CRITERIA})
        return self.reply


def test_mevis_scores_mls_through_a_judge_and_labels_mask_stand_ins_without_one(tiny, tmp_path):
    from vidinterp.datasets.sources import open_dataset
    from vidinterp.testing.dataset_layouts import write_fixture

    source = open_dataset("mevis", write_fixture("mevis", tmp_path / "data"))
    options = {"num_inference_steps": 4, "renoise_step": 2}
    judge = ConstantJudge(4)
    evaluate("mevis", source, tiny, ["cross_attention"], tmp_path / "judged", judge=judge, trace_options=options,
             progress=False, limit=1)
    judged = read_results(tmp_path / "judged")[0]
    assert judge.calls >= 1 and judged["scores"]["cross_attention"] == {"mls": 0.75}  # (4 - 1) / 4
    verdicts = judged["judgements"]["cross_attention"]  # the judge's verdicts are kept with the scores
    assert len(verdicts) == len(judged["samples"]["cross_attention"]["mls"]) >= 1
    assert all(verdict["raw_scores"] == {key: 4 for key in verdict["raw_scores"]} for verdict in verdicts)
    assert all(json.loads(verdict["replies"][-1]) == json.loads(judge.reply) for verdict in verdicts)
    evaluate("mevis", source, tiny, ["cross_attention"], tmp_path / "masks", trace_options=options, progress=False,
             limit=1)
    stand_in = read_results(tmp_path / "masks")[0]
    assert set(stand_in["scores"]["cross_attention"]) == {"mask_motion_iou", "mask_pointing"}
    assert "stand-ins" in stand_in["notes"]["metrics"]


def test_image_benchmarks_leave_out_and_refuse_the_methods_that_compare_frames():
    from vidinterp.evaluation.tasks import get_task

    for name in ("imagenet_seg", "voc2012"):
        assert get_task(name).methods(None) == ["cross_attention", "concept_attention", "gramcol_all_layers",
                                                "gramcol+layer_sel"]
        with pytest.raises(ValueError, match=r"\['imap\+softmax', 'imap\(random2\)'\] rank heads by how they"):
            get_task(name).methods(["cross_attention", "imap+softmax", "imap(random2)"])
    assert "imap" in get_task("vspw").methods(None)


def test_rows_named_with_a_head_count_build_the_ablation_rows():
    from vidinterp.evaluation.methods import check_methods, method_analyses

    top, all_layers, random = method_analyses(["imap(top2_chi)", "imap_all_layers(top3_chi)+softmax", "imap(random2)"])
    assert (top.name, repr(top.heads), top.concept_softmax) == ("imap(top2_chi)", "TopKHeads('chi', k=2, at_most_heads=True)",
                                                               "none")
    assert type(top.layers).__name__ == "Lambda2Layers"  # IMAP's layer selection
    assert (repr(all_layers.heads), type(all_layers.layers).__name__, all_layers.concept_softmax) == (
        "TopKHeads('chi', k=3, at_most_heads=True)", "AllLayers", "final")
    assert repr(random.heads) == "RandomHeads(k=2, seed=0)" and type(random.layers).__name__ == "Lambda2Layers"
    with pytest.raises(ValueError, match=r"unknown map methods \['imap\(top0_chi\)', 'imap\(best2\)'\]"):
        check_methods(["imap(top0_chi)", "imap(best2)"])


def test_a_run_killed_with_sigkill_resumes_without_redoing_finished_clips(dataset, tmp_path):
    """A real kill (SIGKILL, no clean-up) of `vidinterp eval` after its first result file: every
    file left is a complete result, and the rerun finishes the rest without touching them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "vidinterp", "eval", "shapes", "--data", str(dataset), "--model", "zoo:shapes",
               "--methods", "cross_attention", "--out", str(tmp_path), "--no-progress", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    clips = tmp_path / "clips"
    deadline = time.monotonic() + 240
    while not (clips.is_dir() and any(clips.glob("*.json"))):
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no result file within 240 s"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = sorted(clips.glob("*.json"))
    assert 1 <= len(finished) < 4, "the kill must land mid-run"
    stamps = {path.name: _stamp(path) for path in finished}
    assert all(read_result(path)["clip_id"] == path.stem for path in finished)  # complete JSON, nothing half-written

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(finished)} skipped" in rerun.stdout
    assert {path.name: _stamp(path) for path in finished} == stamps
    assert sorted(path.name for path in clips.iterdir()) == [f"clip_{i:05d}.json" for i in range(4)]
    assert "3 clips scored, 1 errors" in (tmp_path / "table.md").read_text()
