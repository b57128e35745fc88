"""Cross-attention maps: how strongly each visual query matches each concept key.

``CA[c, p] = mean_h <q_x[p], k_c>`` per (layer, step), averaged over the selected layers and
steps (METHODS.md, "Baseline maps"). ``q_x`` is the visual query after q/k-norm and rotary;
``k_c`` the concept key (concept stream), or the prompt keys of the concept's words for models
without a stream.
"""

from __future__ import annotations

from typing import Literal

import torch
import xarray as xr

from vidinterp.analysis import Analysis, map_coords
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["CrossAttention", "ConceptSoftmax", "apply_concept_softmax"]

ConceptSoftmax = Literal["none", "per_visit", "final"]
SOFTMAX_CHOICES = ("none", "per_visit", "final")


def apply_concept_softmax(maps: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Softmax over the concept axis (float32)."""
    return torch.softmax(maps.float(), dim=axis)


def check_softmax_choice(choice: str) -> str:
    if choice not in SOFTMAX_CHOICES:
        raise ValueError(f"concept_softmax must be one of {SOFTMAX_CHOICES}, got {choice!r}")
    return choice


@register_analysis
class CrossAttention(Analysis):
    """Cross-attention map ``(concept, frame, y, x)``.

    Args:
        concept_softmax: ``"none"``; ``"per_visit"`` (softmax over concepts of each (layer,
            step) map, then mean); or ``"final"`` (mean, then softmax).
        steps, layers: selectors (see :class:`~vidinterp.analysis.Analysis`).
    """

    name = "cross_attention"
    requires = (("q", "visual"), ("k", "concept"))
    default = True

    def __init__(self, *, concept_softmax: ConceptSoftmax = "none", steps=None, layers=None) -> None:
        super().__init__(steps=steps, layers=layers)
        self.concept_softmax = check_softmax_choice(concept_softmax)

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def update(self, visit: SiteVisit) -> None:
        query = visit.get("q", "visual").float()  # [B, H, P, d]
        key = visit.get("k", "concept").float()  # [B, H, C, d]
        scores = torch.einsum("bhpd,bhcd->cp", query, key) / (query.shape[0] * query.shape[1])
        if self.concept_softmax == "per_visit":
            scores = apply_concept_softmax(scores)
        self.total = scores if self.total is None else self.total + scores
        self.count += 1

    def result(self) -> xr.Dataset:
        layout = self._require_visits()
        maps = self.total / self.count
        if self.concept_softmax == "final":
            maps = apply_concept_softmax(maps)
        maps = maps.reshape(-1, layout.frames, layout.height, layout.width).cpu().numpy()
        return xr.Dataset(
            {self.name: (("concept", "frame", "y", "x"), maps)},
            coords=map_coords(layout, self.context.concepts),
        )

    def settings(self) -> dict:
        return {**super().settings(), "concept_softmax": self.concept_softmax, "visits": self.count}
