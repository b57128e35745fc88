"""The analysis protocol: streaming reducers over site visits.

An analysis declares the site tensors it needs (``requires``), is updated at every analysed
(step, site) visit with a :class:`~vidinterp.sites.SiteVisit`, keeps only running reductions
and returns an ``xarray.Dataset`` from :meth:`Analysis.result`. Several analyses share one
traced pass. Writing a new one means implementing :meth:`update` and :meth:`result`::

    class PromptMass(Analysis):          # analyses/prompt_mass.py, the complete example
        name = "prompt_mass"
        requires = (("q", "visual"), ("k", "all"))

        def update(self, visit):
            ...   # add this visit's contribution to running sums

        def result(self):
            ...   # turn the sums into a Dataset with named dims
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from vidinterp.context import TraceContext
from vidinterp.layout import TokenLayout
from vidinterp.results import GROUPS
from vidinterp.selectors import AllLayers, AllSteps, LayerSelector, StepSelector
from vidinterp.sites import SiteVisit

__all__ = ["Analysis", "map_coords"]


def map_coords(layout: TokenLayout, concepts: list[str]) -> dict[str, Any]:
    """Coordinates of a ``(concept, frame, y, x)`` map: concept names, latent frame index with
    the first/last pixel frame it covers (inclusive), and token-cell rows/columns with their
    pixel centres."""
    frames = np.arange(layout.frames)
    spans = np.array(layout.frame_spans if layout.frame_spans else [(f, f) for f in frames]).reshape(-1, 2)
    first, last = spans[:, 0], spans[:, 1]
    cell_y, cell_x = layout.pixels_per_token
    return {
        "concept": list(concepts),
        "frame": frames,
        "pixel_frame_first": ("frame", first),
        "pixel_frame_last": ("frame", last),
        "y": np.arange(layout.height),
        "x": np.arange(layout.width),
        "y_pixel": ("y", (np.arange(layout.height) + 0.5) * cell_y),
        "x_pixel": ("x", (np.arange(layout.width) + 0.5) * cell_x),
    }


class Analysis(ABC):
    """Base class of every analysis.

    Args:
        steps: which denoising steps this analysis reads (default: all steps the trace runs).
        layers: which layers (blocks) it reads (default: all).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: which ``Trace`` attribute the result joins, one of :data:`vidinterp.results.GROUPS`:
    #: ``"maps"``, ``"heads"``, ``"layers"`` or ``"diagnostics"`` (checked by :meth:`bind`).
    group: ClassVar[str] = "maps"
    #: whether ``vidinterp.trace`` runs it when no analyses are given.
    default: ClassVar[bool] = False
    #: latent frames the method needs (2 for methods that compare frames).
    min_frames: ClassVar[int] = 1
    #: Site kinds the analysis reads (see ``SiteSpec.kind``).
    site_kinds: ClassVar[tuple[str, ...]] = ("joint", "cross")

    def __init__(self, *, steps: StepSelector | None = None, layers: LayerSelector | None = None) -> None:
        self.steps = steps or AllSteps()
        self.layers = layers or AllLayers()
        self.context: TraceContext | None = None
        self.layout: TokenLayout | None = None

    def bind(self, context: TraceContext) -> None:
        """Attach the trace context and reset running sums. Called once before a trace; raises
        a ``ValueError`` for a :attr:`group` the trace has no place for."""
        if self.group not in GROUPS:
            raise ValueError(f"analysis {self.name!r} declares group {self.group!r}; expected one of {GROUPS}")
        self.context = context
        self.layout = None
        self.steps.bind(context)
        self.layers.bind(context)
        self.reset()

    def reset(self) -> None:
        """Clear running sums (subclasses that keep state override this)."""

    def applies_to(self, visit: SiteVisit) -> bool:
        return visit.site.kind in self.site_kinds and all(
            visit.provides(tensor, part) for tensor, part in self.requires
        )

    def observe(self, visit: SiteVisit) -> None:
        """Route a visit to :meth:`update` when its site, step and layer are selected."""
        if not self.applies_to(visit):
            return
        if not (self.steps.selects(visit.step) and self.layers.selects(visit.layer)):
            return
        if self.layout is None:
            self.layout = visit.layout
        self.update(visit)

    @abstractmethod
    def update(self, visit: SiteVisit) -> None:
        """Fold one (step, site) visit into running reductions (no per-visit storage)."""

    @abstractmethod
    def result(self) -> xr.Dataset:
        """The reduced result as a Dataset with named dims and coordinates."""

    def merge(self, other: "Analysis") -> "Analysis":
        """Fold the running reductions of ``other`` (same class and settings, another trace
        call, e.g. over other steps) into this one; ``result()`` then covers both."""
        raise NotImplementedError(f"analysis {self.name!r} does not support merging runs")

    def settings(self) -> dict[str, Any]:
        """Provenance attrs for the result Dataset."""
        return {"method": self.name, "steps": repr(self.steps), "layers": repr(self.layers)}

    def _require_visits(self) -> TokenLayout:
        if self.layout is None:
            raise RuntimeError(
                f"analysis {self.name!r} saw no site visit: check that its steps "
                f"({self.steps!r}) and layers ({self.layers!r}) select some of the traced ones "
                f"and that the model's sites provide the tensors it reads {list(self.requires)}"
            )
        return self.layout
