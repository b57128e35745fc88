"""Base class of the map analyses: one ``(concept, frame, y, x)`` map per visit, averaged over
the selected visits, with an explicit choice of where the softmax over concepts goes. A new map
method subclasses :class:`MapAnalysis` and implements only :meth:`MapAnalysis.visit_map`."""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
import xarray as xr

from vidinterp.analysis import Analysis, map_coords
from vidinterp.sites import SiteVisit

__all__ = ["MapAnalysis", "ConceptSoftmax", "SOFTMAX_CHOICES"]

ConceptSoftmax = Literal["none", "per_visit", "final"]
SOFTMAX_CHOICES = ("none", "per_visit", "final")


class MapAnalysis(Analysis):
    """A map method: :meth:`visit_map` gives this visit's ``[C, P]`` float32 map (one row per
    concept slot: the concepts, then any padding slots); the result is its mean over visits,
    for the concepts.

    Args:
        concept_softmax: ``"none"``; ``"per_visit"``: softmax over concepts of each (layer,
            step) map, then the mean (softmax-then-mean); ``"final"``: the mean, then softmax
            (mean-then-softmax).
    """

    group = "maps"

    def __init__(self, *, concept_softmax: ConceptSoftmax = "none", steps=None, layers=None) -> None:
        super().__init__(steps=steps, layers=layers)
        if concept_softmax not in SOFTMAX_CHOICES:
            raise ValueError(f"concept_softmax must be one of {SOFTMAX_CHOICES}, got {concept_softmax!r}")
        self.concept_softmax = concept_softmax

    def reset(self) -> None:
        self.total: torch.Tensor | None = None  # [C, P] float32 running sum
        self.count = 0

    @abstractmethod
    def visit_map(self, visit: SiteVisit) -> torch.Tensor:
        """This visit's map, ``[C, P]`` float32 (``P`` visual tokens, frame-major)."""

    def update(self, visit: SiteVisit) -> None:
        scores = self.visit_map(visit).float()
        if self.concept_softmax == "per_visit":
            scores = torch.softmax(scores, dim=0)
        self.total = scores if self.total is None else self.total + scores
        self.count += 1

    def merge(self, other: "MapAnalysis") -> "MapAnalysis":
        """Fold another run's sums into this one (e.g. two traces over different steps)."""
        if other.total is None:
            return self
        if self.total is None:
            self.total, self.count, self.layout = other.total.clone(), other.count, other.layout
        else:
            self.total, self.count = self.total + other.total, self.count + other.count
        return self

    def result(self) -> xr.Dataset:
        layout = self._require_visits()
        maps = self.total / self.count
        if self.concept_softmax == "final":
            maps = torch.softmax(maps, dim=0)
        # the softmax runs over every concept slot; padding slots (concept_slots) are not returned
        maps = maps[: len(self.context.concepts)]
        maps = maps.reshape(-1, layout.frames, layout.height, layout.width).cpu().numpy()
        return xr.Dataset(
            {self.name: (("concept", "frame", "y", "x"), maps)},
            coords=map_coords(layout, self.context.concepts),
        )

    def settings(self) -> dict:
        return {**super().settings(), "concept_softmax": self.concept_softmax, "visits": self.count}
