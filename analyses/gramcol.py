"""GramCol: spatial localisation from one column of the Gram matrix of visual outputs.

Per head and latent frame, the column of the Gram matrix of the visual outputs ``o_x`` at the
surrogate token of the concept:

    GramCol[c, h, f, p] = <o_x[s(c, h, f)], o_x[p]>      for p in frame f

Only the ``C x F`` surrogate columns are formed, never the ``P x P`` Gram matrix. Per visit,
the columns are optionally normalised (``normalize="concept_zscore"``: the official code's
z-score of every (head, frame, position) entry across the concept-slot axis, unbiased std +
1e-6), then reduced over the selected heads (``head_reduction="mean"``, the paper's eq. 7, or
``"sum"``, the official code's ``imap``), then averaged over the selected layers and steps.
"""

from __future__ import annotations

from typing import Literal

import torch
import xarray as xr

from vidinterp.accumulators import step_layer_grid
from vidinterp.kernels.heads import AllHeads, HeadSelector
from vidinterp.kernels.surrogate import QKPeak, SurrogateSelector
from vidinterp.kernels.tokens import frames_view
from vidinterp.maps import ConceptSoftmax, MapAnalysis
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["GramCol", "gram_columns", "NORMALIZATIONS", "HEAD_REDUCTIONS"]

NORMALIZATIONS = ("none", "concept_zscore")
Normalization = Literal["none", "concept_zscore"]
HEAD_REDUCTIONS = ("mean", "sum")
HeadReduction = Literal["mean", "sum"]


def gram_columns(outputs: torch.Tensor, positions: torch.Tensor, frames: int) -> torch.Tensor:
    """Gram-matrix columns at surrogate tokens, within each frame.

    Args:
        outputs: visual outputs ``[B, H, P, d]`` (frame-major tokens).
        positions: surrogate global token indices ``[B, H, C, F]``.
        frames: latent frames ``F``.

    Returns:
        ``[B, H, C, F, P/F]`` float32: ``<o_x[s(c,h,f)], o_x[p]>`` for the tokens ``p`` of frame
        ``f``.
    """
    batch, heads, tokens, dim = outputs.shape
    concepts = positions.shape[2]
    outputs = outputs.float()
    index = positions.reshape(batch, heads, concepts * frames, 1).expand(-1, -1, -1, dim)
    surrogates = outputs.gather(2, index).reshape(batch, heads, concepts, frames, dim)
    return torch.einsum("bhcfd,bhfnd->bhcfn", surrogates, frames_view(outputs, frames))


@register_analysis
class GramCol(MapAnalysis):
    """GramCol map ``(concept, frame, y, x)``.

    Args:
        heads: head selector applied at every visit (default: all heads).
        surrogate: surrogate-token selector (default: QK peak per frame).
        normalize: ``"none"`` (paper) or ``"concept_zscore"`` (official code; needs >= 2
            concept slots, and makes each map depend on the other concepts).
        head_reduction: ``"mean"`` (paper) or ``"sum"`` over the selected heads.
        concept_softmax, steps, layers: see :class:`~vidinterp.maps.MapAnalysis`.
    """

    name = "gramcol"
    site_kinds = ("joint", "cross")
    default = True

    def __init__(
        self,
        *,
        heads: HeadSelector | None = None,
        surrogate: SurrogateSelector | None = None,
        normalize: Normalization = "none",
        head_reduction: HeadReduction = "mean",
        concept_softmax: ConceptSoftmax = "none",
        steps=None,
        layers=None,
    ) -> None:
        super().__init__(concept_softmax=concept_softmax, steps=steps, layers=layers)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduction must be one of {HEAD_REDUCTIONS}, got {head_reduction!r}")
        self.heads = heads or AllHeads()
        self.surrogate = surrogate or QKPeak()
        self.normalize, self.head_reduction = normalize, head_reduction
        self.requires = tuple(dict.fromkeys((("z", "visual"),) + self.surrogate.requires + self.heads.requires))

    def bind(self, context) -> None:
        if self.normalize == "concept_zscore" and context.concept_slots < 2:
            raise ValueError(
                f"normalize='concept_zscore' needs at least 2 concept slots (the unbiased std over one "
                f"concept is undefined; the official code gives NaN), got {context.concepts}: add concepts "
                f"or pad the concept stream (concept_slots=...)"
            )
        super().bind(context)
        self.surrogate.bind(context)

    def reset(self) -> None:
        super().reset()
        self.selected: dict[tuple[int, int], torch.Tensor] = {}

    def visit_map(self, visit: SiteVisit) -> torch.Tensor:
        mask, keep = self.heads.selection(visit)  # keep: the kept heads, on the device, no host read
        self.selected[(visit.step, visit.layer)] = mask
        outputs = visit.get("z", "visual").index_select(1, keep)
        positions = self.surrogate.positions(visit).index_select(1, keep)
        columns = gram_columns(outputs, positions, visit.layout.frames)  # [B, h, C, F, n]
        if self.normalize == "concept_zscore":
            mean = columns.mean(dim=2, keepdim=True)
            std = columns.std(dim=2, keepdim=True, unbiased=True)
            columns = (columns - mean) / (std + 1e-6)
        heads_reduced = columns.sum(dim=1) if self.head_reduction == "sum" else columns.mean(dim=1)
        batch, concepts = heads_reduced.shape[:2]
        return heads_reduced.mean(dim=0).reshape(concepts, -1)

    def merge(self, other: "GramCol") -> "GramCol":
        super().merge(other)
        self.selected.update(other.selected)
        return self

    def result(self) -> xr.Dataset:
        dataset = super().result()
        grid, steps, layers = step_layer_grid(self.selected, fill=False)
        variable = xr.DataArray(
            grid, dims=("step", "layer", "head"),
            coords={"step": steps, "layer": layers, "head": list(range(grid.shape[-1]))},
            attrs={"group": "heads", "description": f"heads kept by {self.heads!r} at each visit"},
        )
        return dataset.assign({f"{self.name}_selected_heads": variable})

    def settings(self) -> dict:
        return {**super().settings(), "heads": repr(self.heads), "surrogate": repr(self.surrogate),
                "normalize": self.normalize, "head_reduction": self.head_reduction}
