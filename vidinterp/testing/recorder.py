"""An analysis that records what the analyses are shown: for tests of adapters and of the
runtime, and for a researcher checking what a site hands to an analysis::

    recorder = VisitRecorder(keep=[("k", "prompt")])
    vidinterp.trace(pipe, prompt=..., concepts=[...], analyses=[recorder])
    recorder.visits                                         # [(step, site name), ...] in visit order
    recorder.one(0, "blocks.0.cross_attn", "k", "prompt")   # [1, heads, T, head_dim]
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
import xarray as xr

from vidinterp.analysis import Analysis
from vidinterp.layout import TokenLayout

__all__ = ["VisitRecorder"]

#: every tensor and token part a site may provide
ALL_PARTS = tuple((tensor, part) for tensor in "qkvz" for part in ("visual", "prompt", "concept"))


class VisitRecorder(Analysis):
    """Records every analysed visit: its step and site, its token layout, and detached clones of
    the tensor parts named in ``keep`` that the site provides (``"all"``: every one of
    :data:`ALL_PARTS`). The tensors are the analysed CFG branch's rows, as any analysis gets them.

    Attributes (after a trace):
        visits: ``[(step, site name)]`` in visit order.
        layouts: ``{(step, site name): TokenLayout}`` (the latest visit's).
        tensors: ``{(step, site name, tensor, part): [clone per visit]}``.
    """

    name = "visit_recorder"
    group = "diagnostics"
    site_kinds = ("joint", "self", "cross")

    def __init__(self, keep: Iterable[tuple[str, str]] | Literal["all"] = (), **selectors) -> None:
        super().__init__(**selectors)
        self.keep = ALL_PARTS if keep == "all" else tuple(keep)

    def reset(self) -> None:
        self.visits: list[tuple[int, str]] = []
        self.layouts: dict[tuple[int, str], TokenLayout] = {}
        self.tensors: dict[tuple[int, str, str, str], list[torch.Tensor]] = {}

    def update(self, visit) -> None:
        where = (visit.step, visit.site.name)
        self.visits.append(where)
        self.layouts[where] = visit.layout
        for tensor, part in self.keep:
            if visit.provides(tensor, part):
                self.tensors.setdefault((*where, tensor, part), []).append(visit.get(tensor, part).detach().clone())

    def one(self, step: int, site: str, tensor: str, part: str) -> torch.Tensor:
        """The tensor part recorded at ``step`` and ``site``; raises if it was recorded at more
        or fewer than one visit."""
        recorded = self.tensors.get((step, site, tensor, part), [])
        if len(recorded) != 1:
            raise LookupError(f"{tensor}/{part} of {site} at step {step} was recorded {len(recorded)} times, expected once")
        return recorded[0]

    def result(self) -> xr.Dataset:
        return xr.Dataset()
