"""Turning per-(step, layer) records into labelled arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["step_layer_grid", "RunningMeans"]


class RunningMeans:
    """Per-(step, layer) running means of small tensors (e.g. one score per head), mergeable
    across trace calls: runs over the same (step, layer) average, runs over others add keys."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, key: tuple[int, int], value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: "RunningMeans") -> None:
        for key, total in other.sums.items():
            self.sums[key] = self.sums[key] + total if key in self.sums else total.clone()
            self.counts[key] = self.counts.get(key, 0) + other.counts[key]

    def __bool__(self) -> bool:
        return bool(self.sums)

    def means(self) -> dict[tuple[int, int], torch.Tensor]:
        return {key: (total / self.counts[key]).float() for key, total in self.sums.items()}


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
