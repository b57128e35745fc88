"""Selectors of denoising steps and layers that analyses compose.

A selector is bound to the :class:`~vidinterp.context.TraceContext` before a trace and then
answers ``selects(index)``. Their ``repr`` is stored in result attrs.
"""

from __future__ import annotations

from typing import Iterable

from vidinterp.context import TraceContext

__all__ = [
    "StepSelector",
    "AllSteps",
    "StepIndices",
    "LateSteps",
    "LayerSelector",
    "AllLayers",
    "LayerIndices",
]


class StepSelector:
    """Chooses denoising step indices (0 = first, noisiest step)."""

    def bind(self, context: TraceContext) -> None:
        self.num_steps = context.num_inference_steps

    def selects(self, step: int) -> bool:
        raise NotImplementedError

    def indices(self, num_steps: int) -> list[int]:
        """The selected indices of a schedule of ``num_steps`` steps."""
        self.num_steps = num_steps
        return [step for step in range(num_steps) if self.selects(step)]


class AllSteps(StepSelector):
    def selects(self, step: int) -> bool:
        return True

    def __repr__(self) -> str:
        return "AllSteps()"


class StepIndices(StepSelector):
    def __init__(self, indices: Iterable[int]) -> None:
        self.steps = sorted({int(index) for index in indices})
        if not self.steps:
            raise ValueError("StepIndices needs at least one step index, got none")

    def bind(self, context: TraceContext) -> None:
        super().bind(context)
        outside = [step for step in self.steps if not 0 <= step < self.num_steps]
        if outside:
            raise ValueError(
                f"steps {outside} are outside the schedule: expected indices in "
                f"0..{self.num_steps - 1} for {self.num_steps} inference steps"
            )

    def selects(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self) -> str:
        return f"StepIndices({self.steps})"


class LateSteps(StepSelector):
    """Skips the first ``skip_fraction`` of the schedule: early, near-noise steps give blurry
    maps with memorisation artefacts (docs/methods.md, "Steps and modes")."""

    def __init__(self, skip_fraction: float = 0.3) -> None:
        if not 0.0 <= skip_fraction < 1.0:
            raise ValueError(f"skip_fraction must be in [0, 1), got {skip_fraction}")
        self.skip_fraction = skip_fraction

    def selects(self, step: int) -> bool:
        return step >= int(self.skip_fraction * self.num_steps)

    def __repr__(self) -> str:
        return f"LateSteps(skip_fraction={self.skip_fraction})"


class LayerSelector:
    """Chooses blocks (layers) by index."""

    def bind(self, context: TraceContext) -> None:
        self.num_layers = context.num_layers

    def selects(self, layer: int) -> bool:
        raise NotImplementedError


class AllLayers(LayerSelector):
    def selects(self, layer: int) -> bool:
        return True

    def __repr__(self) -> str:
        return "AllLayers()"


class LayerIndices(LayerSelector):
    def __init__(self, indices: Iterable[int]) -> None:
        self.layers = sorted({int(index) for index in indices})
        if not self.layers:
            raise ValueError("LayerIndices needs at least one layer index, got none")

    def bind(self, context: TraceContext) -> None:
        super().bind(context)
        outside = [layer for layer in self.layers if not 0 <= layer < self.num_layers]
        if outside:
            raise ValueError(
                f"layers {outside} do not exist: the model has layers 0..{self.num_layers - 1}"
            )

    def selects(self, layer: int) -> bool:
        return layer in self.layers

    def __repr__(self) -> str:
        return f"LayerIndices({self.layers})"
