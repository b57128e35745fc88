"""Seeded fuzzing of the video input path (vidinterp.testing.video_fuzz; the same loop as
``benchmarks/fuzz_video.py``, which writes ``benchmarks/results/fuzz_video.json``).

Mutated clip files are decoded in a worker subprocess, so a decoder that crashes the
interpreter or hangs fails this test with the case named instead of killing pytest; every case
must decode to valid frames or raise ``VideoReadError`` naming the file. Odd arrays and tensors
must be converted correctly or refused with a ``TypeError``/``ValueError`` that names ``video``,
the shape and dtype received and what is expected.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from vidinterp.testing import video_fuzz
from vidinterp.testing.video_fuzz import MUTATIONS, fuzz_arrays, fuzz_files, mutate


def test_mutated_clips_decode_or_raise_the_read_error_naming_the_file():
    report = fuzz_files(cases=200, seed=0, case_timeout=10.0)
    print(f"\nfuzzed {report.cases} mutated clips in {report.seconds:.1f} s: {report.outcomes['decoded']} decoded, "
          f"{report.outcomes['clear_error']} clear VideoReadError, "
          f"{report.cases - report.outcomes['decoded'] - report.outcomes['clear_error']} other; by base "
          f"{json.dumps(report.by_base)}; slowest case {report.slowest_seconds:.2f} s")
    assert report.cases == 200
    assert report.ok, f"cases neither decoded nor refused clearly: {report.findings[:5]}"
    assert set(report.by_base) == {"mp4", "gif", "webp"} and set(report.by_mutation) == set(MUTATIONS)
    assert report.outcomes["decoded"] >= 20 and report.outcomes["clear_error"] >= 20  # both paths exercised


def test_odd_arrays_are_converted_or_refused_clearly():
    result = fuzz_arrays(count=300, seed=0)
    print(f"\nfuzzed {result['cases']} arrays and tensors: {result['accepted']} accepted, "
          f"{result['clear_error']} clear errors, {len(result['findings'])} other")
    assert not result["findings"], result["findings"][:5]
    assert result["accepted"] >= 50 and result["clear_error"] >= 100


def test_odd_arrays_through_a_trace_name_video():
    import vidinterp
    import vidinterp.testing

    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    for value in (np.zeros(()), np.zeros((1, 2, 9, 32, 48, 3)), np.zeros((9, 32, 48, 3), np.complex64),
                  np.full((9, 32, 48, 3), np.inf)):
        with pytest.raises((TypeError, ValueError)) as raised:
            vidinterp.trace(pipe, video=value, prompt="a dog", concepts=["dog"], num_inference_steps=2)
        message = str(raised.value)
        assert "video" in message and str(list(value.shape)) in message and str(value.dtype) in message, message


def test_the_driver_records_a_crash_and_a_hang_and_goes_on(monkeypatch, tmp_path):
    """The isolation the file fuzz relies on: a worker that dies is a "crash", one that stalls a
    "hang", and the cases after it still run."""
    crash, hang = 1, 3
    script = tmp_path / "fake_worker.py"
    script.write_text(
        "import json, os, sys, time\n"
        "args = sys.argv[1:]\n"
        "start, stop = int(args[args.index('--start') + 1]), int(args[args.index('--stop') + 1])\n"
        "print(json.dumps({'ready': True}), flush=True)\n"
        "for case in range(start, stop):\n"
        f"    if case == {crash}: os.abort()\n"
        f"    if case == {hang}: time.sleep(60)\n"
        "    print(json.dumps({'case': case, 'base': 'mp4', 'mutation': 'truncate', 'outcome': 'decoded', "
        "'detail': '', 'seconds': 0.0}), flush=True)\n"
    )
    original = video_fuzz.subprocess.Popen

    def fake_popen(command, **kwargs):
        return original([sys.executable, str(script), *command[3:]], **kwargs)

    monkeypatch.setattr(video_fuzz.subprocess, "Popen", fake_popen)
    report = fuzz_files(cases=6, seed=0, case_timeout=2.0, folder=tmp_path / "bases")
    assert report.cases == 6
    assert [finding["case"] for finding in report.findings] == [crash, hang]
    assert report.outcomes["crash"] == 1 and report.outcomes["hang"] == 1 and report.outcomes["decoded"] == 4
    assert not report.ok


def test_mutations_are_seeded_and_change_the_bytes():
    data = bytes(range(256)) * 8
    first = [mutate(data, np.random.default_rng([0, index])) for index in range(50)]
    again = [mutate(data, np.random.default_rng([0, index])) for index in range(50)]
    assert first == again
    assert {kind for kind, _ in first} == set(MUTATIONS)
    assert all(mutated != data for _, mutated in first)
