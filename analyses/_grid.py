"""Turning per-(step, layer) records into labelled arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["step_layer_grid"]


def step_layer_grid(records: dict[tuple[int, int], torch.Tensor], fill: Any) -> tuple[np.ndarray, list[int], list[int]]:
    """Stack ``{(step, layer): tensor[...]}`` into an array ``[step, layer, ...]`` over the sorted
    steps and layers seen, ``fill`` where a pair was not visited. Returns (array, steps, layers)."""
    steps = sorted({step for step, _ in records})
    layers = sorted({layer for _, layer in records})
    sample = next(iter(records.values())).cpu().numpy()
    grid = np.full((len(steps), len(layers), *sample.shape), fill, dtype=np.result_type(sample.dtype, fill))
    for (step, layer), value in records.items():
        grid[steps.index(step), layers.index(layer)] = value.cpu().numpy()
    return grid, steps, layers
