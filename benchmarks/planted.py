"""Known answers of every planted model: the table the conformance checks assert, printed.

For each family with a planted pipeline (``vidinterp.testing.planted_families()``): one renoise
trace of the planted clip, then per map method and planted word the pointing accuracy and IoU
(mean and worst over frames) of the token maps and of the maps taken to pixel resolution, the QK
peaks of the localising head, the motion head's rank in its layer, and lambda2 per layer with
each layer's designed role.

    python benchmarks/planted.py                       # prints Markdown
    python benchmarks/planted.py --out benchmarks/results/planted   # also writes .md and .json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vidinterp.testing import planted_families, planted_pipeline, planted_scores


def layer_roles(design) -> dict[int, str]:
    roles = {design.uniform_layer: "uniform", design.identity_layer: "identity", design.localising[0]: "localising"}
    if design.motion is not None:
        roles[design.motion[0]] = "motion"
    return roles


def measure() -> dict:
    results = {}
    for family in planted_families():
        start = time.perf_counter()
        pipe = planted_pipeline(family)
        scores = planted_scores(pipe)
        design = pipe.vidinterp_planted
        results[family] = {
            "seconds": round(time.perf_counter() - start, 2),
            "maps": [{"method": method, "word": word, "resolution": resolution,
                      "pointing": values[0], "mean_iou": values[1], "worst_iou": values[2]}
                     for resolution, key in (("token", "maps"), ("pixel", "pixel_maps"))
                     for (method, word), values in scores[key].items()],
            "qk_peaks": scores["qk_peaks"],
            "motion_rank": scores["motion_rank"],
            "lambda2": {str(layer): value for layer, value in scores["lambda2"].items()},
            "roles": {str(layer): role for layer, role in layer_roles(design).items()},
        }
    return results


def markdown(results: dict) -> str:
    lines = ["| family | method | word | resolution | pointing | mean IoU | worst IoU |", "|---|---|---|---|---|---|---|"]
    for family, result in results.items():
        for row in result["maps"]:
            lines.append(f"| {family} | {row['method']} | {row['word']} | {row['resolution']} | {row['pointing']:.2f} "
                         f"| {row['mean_iou']:.2f} | {row['worst_iou']:.2f} |")
    lines += ["", "| family | QK peaks in mask (red, blue) | motion head rank | lambda2 by layer (role) | seconds |",
              "|---|---|---|---|---|"]
    for family, result in results.items():
        peaks = ", ".join(f"{share:.2f}" for share in result["qk_peaks"].values())
        rank = "n/a (image)" if result["motion_rank"] is None else str(result["motion_rank"])
        order = ", ".join(f"{layer}: {value:.3f} ({result['roles'].get(layer, '-')})"
                          for layer, value in result["lambda2"].items())
        lines.append(f"| {family} | {peaks} | {rank} | {order} | {result['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = parser.parse_args()
    results = measure()
    table = markdown(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
