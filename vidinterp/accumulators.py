"""Per-(step, layer) accumulators for analyses, and their conversion to labelled arrays.

An analysis that keeps one small tensor per visited (denoising step, layer), e.g. a score per
head, folds each visit into a :class:`RunningMeans` under the key ``(visit.step, visit.layer)``
and turns the means into an array ``[step, layer, ...]`` with :func:`step_layer_grid`::

    self.records.add((visit.step, visit.layer), scores)      # scores: [H]
    grid, steps, layers = step_layer_grid(self.records.means(), fill=float("nan"))  # [S, L, H]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["StepLayer", "RunningMeans", "step_layer_grid"]

#: The key of one visited pair: ``(step, layer)``.
StepLayer = tuple[int, int]


class RunningMeans:
    """Running means of same-shape tensors, one per (step, layer), mergeable across trace calls:
    runs over the same (step, layer) average, runs over others add keys.

    Sums stay on the device of the values added, in float32 whatever the values' dtype
    (bfloat16/float16 models included; float64 values keep float64), and :meth:`add` never reads
    a value on the host, so a site visit adds no host synchronisation; only :meth:`means`' caller
    (an analysis' ``result()``) moves them to the host.

    Attributes:
        sums: ``{(step, layer): tensor[...]}`` sums of the values added, on their device, float32
            (float64 for float64 values).
        counts: ``{(step, layer): int}`` number of values added per key.
    """

    def __init__(self) -> None:
        self.sums: dict[StepLayer, torch.Tensor] = {}
        self.counts: dict[StepLayer, int] = {}

    def add(self, key: StepLayer, value: torch.Tensor) -> None:
        """Fold one value (any shape, the same for every key; any device) in under ``key``."""
        value = value.detach().to(torch.promote_types(value.dtype, torch.float32), copy=key not in self.sums)
        self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: "RunningMeans") -> None:
        """Fold another instance's sums and counts into this one (in place)."""
        for key, total in other.sums.items():
            self.sums[key] = self.sums[key] + total if key in self.sums else total.clone()
            self.counts[key] = self.counts.get(key, 0) + other.counts[key]

    def __bool__(self) -> bool:
        return bool(self.sums)

    def means(self) -> dict[StepLayer, torch.Tensor]:
        """``{(step, layer): mean}``, each float32 of the values' shape, on the sums' device."""
        return {key: (total / self.counts[key]).float() for key, total in self.sums.items()}


def step_layer_grid(records: dict[StepLayer, torch.Tensor], fill: Any) -> tuple[np.ndarray, list[int], list[int]]:
    """Stack ``{(step, layer): tensor[...]}`` into an array ``[step, layer, ...]`` over the sorted
    steps and layers seen, ``fill`` where a pair was not visited. Returns (array, steps, layers)."""
    steps = sorted({step for step, _ in records})
    layers = sorted({layer for _, layer in records})
    sample = next(iter(records.values())).cpu().numpy()
    grid = np.full((len(steps), len(layers), *sample.shape), fill, dtype=np.result_type(sample.dtype, fill))
    for (step, layer), value in records.items():
        grid[steps.index(step), layers.index(layer)] = value.cpu().numpy()
    return grid, steps, layers
