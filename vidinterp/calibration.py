"""Reading a layer-score calibration file into the form traces use (``pipe.vidinterp_calibration``).

A calibration file is the JSON that :func:`vidinterp.analyses.lambda2.save_layer_scores` writes:
``{"scores": {layer: score}, "threshold": t (optional), ...provenance}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_calibration"]


def load_calibration(source: str | os.PathLike) -> dict[str, Any]:
    """A layer-score file as a trace calibration (``pipe.vidinterp_calibration``):
    ``{"lambda2": {layer: score}}``, plus ``"lambda2_threshold"`` when the file records the
    ``threshold`` its scores were made for (``save_layer_scores(..., threshold=t)``)."""
    payload = json.loads(Path(source).read_text())
    if "scores" not in payload:
        raise ValueError(f"{source} is not a layer-score file: it has no 'scores' entry")
    calibration: dict[str, Any] = {"lambda2": {int(layer): float(score) for layer, score in payload["scores"].items()}}
    if payload.get("threshold") is not None:
        calibration["lambda2_threshold"] = float(payload["threshold"])
    return calibration
