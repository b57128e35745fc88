"""The run-time state shared by the installed site processors during one trace.

The driver (generation through the pipeline, or the renoising loop) sets the denoising step;
the adapter's transformer hooks announce each call's :class:`~vidinterp.layout.TokenLayout` and
whether it is the conditional call; processors report their tensors through :meth:`visit`,
which hands a :class:`~vidinterp.sites.SiteVisit` to every analysis.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import torch

from vidinterp.layout import TokenLayout
from vidinterp.sites import SiteSpec, SiteVisit

if TYPE_CHECKING:
    from vidinterp.analysis import Analysis

__all__ = ["Runtime"]


class Runtime:
    """Step clock, current token layout and the analyses fed by the sites.

    Args:
        analyses: analyses updated at every analysed (step, site) visit.
        steps: denoising step indices to analyse; ``None`` analyses every step.
        concept_state: the adapter's concept-stream state (``None`` without concepts).
    """

    def __init__(
        self,
        analyses: Iterable["Analysis"] = (),
        steps: Iterable[int] | None = None,
        concept_state: Any = None,
    ) -> None:
        self.analyses = list(analyses)
        self.steps = None if steps is None else frozenset(int(step) for step in steps)
        self.concept_state = concept_state
        self.step = 0
        self.timestep = math.nan
        self.layout: TokenLayout | None = None
        self.active = False
        self.visited_steps: list[int] = []
        self._timesteps = None
        #: pixel frames of the video being generated or renoised (``None``: unknown).
        self.pixel_frames: int | None = None
        #: whether the driver batches CFG branches into one call (unconditional rows first).
        self.cfg_batched = False

    def set_step(self, step: int, timestep: float | torch.Tensor = math.nan) -> None:
        """Announce the denoising step index (position in the scheduler's schedule)."""
        self.step = int(step)
        self.timestep = float(timestep)

    def set_timestep_from(self, timesteps) -> None:
        """Read the current step's timestep from ``timesteps[step]`` when a call begins
        (pipelines set their schedule only once called)."""
        self._timesteps = timesteps

    def begin_call(self, layout: TokenLayout, conditional: bool = True) -> None:
        """Called by the adapter before each transformer call. Unconditional-only calls and
        steps outside ``steps`` are not analysed (processors then skip all extra work)."""
        self.layout = layout
        if self._timesteps is not None:
            values = self._timesteps()
            if self.step < len(values):
                self.timestep = float(values[self.step])
        self.active = conditional and (self.steps is None or self.step in self.steps)
        if self.active and (not self.visited_steps or self.visited_steps[-1] != self.step):
            self.visited_steps.append(self.step)

    def end_call(self) -> None:
        self.active = False

    @property
    def concepts_active(self) -> bool:
        """Whether the concept stream runs in the current call."""
        return self.active and self.concept_state is not None

    def visit(
        self,
        spec: SiteSpec,
        tensors: dict[str, torch.Tensor],
        parts: dict[str, dict[str, slice]],
        concept_tensors: dict[str, torch.Tensor],
    ) -> None:
        if not self.active or not self.analyses:
            return
        visit = SiteVisit(
            site=spec,
            step=self.step,
            timestep=self.timestep,
            layout=self.layout,
            tensors=tensors,
            parts=parts,
            concept_tensors=concept_tensors,
        )
        with torch.no_grad():
            for analysis in self.analyses:
                analysis.observe(visit)
