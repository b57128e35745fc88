"""Head selectors: which heads of a (step, layer) visit a method keeps.

``TopKHeads("chi", k=5)`` keeps the k heads whose visual outputs separate the latent frames
best (IMAP's motion heads); ``RandomHeads(k, seed)`` is the ablation control; ``AllHeads()``
and ``HeadIndices([...])`` are explicit. :meth:`HeadSelector.selection` gives the mask and the
kept heads' indices on the model's device without a host synchronisation for every selector
here (``TopKHeads`` ranks on the device; the others know their heads without reading a tensor).
"""

from __future__ import annotations

import zlib
from typing import Iterable

import torch

from vidinterp.kernels.cluster_scores import HIGHER_IS_BETTER, SEPARATION_SCORES, separation_score
from vidinterp.kernels.tokens import frames_view
from vidinterp.kernels.transfer import to_device
from vidinterp.sites import SiteVisit

__all__ = ["HeadSelector", "AllHeads", "HeadIndices", "TopKHeads", "RandomHeads", "frame_separation"]


def frame_separation(visit: SiteVisit, score: str, **options) -> torch.Tensor:
    """``[heads]`` float32 separation score ``score`` of the visit's visual outputs (latent
    frames as clusters), averaged over the analysed rows, on the visit's device. Computed once
    per visit for each score and options (``TopKHeads`` and the separation analysis share it);
    options that are not plain values (e.g. a ``torch.Generator``) are not shared."""

    def compute() -> torch.Tensor:
        outputs = frames_view(visit.get("z", "visual"), visit.layout.frames)
        return separation_score(outputs, score, **options).mean(dim=0)

    if not all(isinstance(value, (bool, int, float, str, type(None))) for value in options.values()):
        return compute()
    return visit.shared(("frame_separation", score, tuple(sorted(options.items()))), compute)


class HeadSelector:
    """Chooses heads per visit; :meth:`select` returns a ``[heads]`` bool mask."""

    requires: tuple[tuple[str, str], ...] = ()

    def select(self, visit: SiteVisit) -> torch.Tensor:
        raise NotImplementedError

    def selection(self, visit: SiteVisit) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, heads)``: :meth:`select`'s ``[heads]`` bool mask and the kept heads'
        indices, increasing, int64 on the visit's device (what an analysis gathers heads with).
        The default takes the indices of a host mask on the host and queues their copy
        (:func:`~vidinterp.kernels.transfer.to_device`); a mask on the device has a
        value-dependent number of heads, read on the host (one synchronisation): selectors
        that rank heads on the device override this."""
        mask = self.select(visit)
        device = _device_of(visit)
        if mask.device.type == "cpu":
            return mask, to_device(mask.nonzero().squeeze(1), device)
        return mask, mask.nonzero().squeeze(1).to(device)

    @staticmethod
    def _check_k(k: int, heads: int) -> None:
        if not 1 <= k <= heads:
            raise ValueError(f"k must be in 1..{heads} (the site's number of heads), got {k}")


class AllHeads(HeadSelector):
    def select(self, visit: SiteVisit) -> torch.Tensor:
        return torch.ones(visit.site.heads, dtype=torch.bool)

    def selection(self, visit: SiteVisit) -> tuple[torch.Tensor, torch.Tensor]:
        return self.select(visit), torch.arange(visit.site.heads, device=_device_of(visit))

    def __repr__(self) -> str:
        return "AllHeads()"


class HeadIndices(HeadSelector):
    def __init__(self, indices: Iterable[int]) -> None:
        self.indices = sorted({int(index) for index in indices})
        if not self.indices:
            raise ValueError("HeadIndices needs at least one head index, got none")

    def select(self, visit: SiteVisit) -> torch.Tensor:
        heads = visit.site.heads
        outside = [index for index in self.indices if not 0 <= index < heads]
        if outside:
            raise ValueError(f"heads {outside} do not exist at {visit.site.name}: expected 0..{heads - 1}")
        mask = torch.zeros(heads, dtype=torch.bool)
        mask[self.indices] = True
        return mask

    def __repr__(self) -> str:
        return f"HeadIndices({self.indices})"


class TopKHeads(HeadSelector):
    """The ``k`` heads with the best separation score of this visit's visual outputs ``o_x``
    (latent frames as clusters; docs/methods.md, "Separation scores"), averaged over
    conditional rows."""

    requires = (("z", "visual"),)

    def __init__(self, score: str = "chi", k: int = 5, *, at_most_heads: bool = False, **score_options) -> None:
        """``at_most_heads=True`` keeps every head of sites with fewer than ``k`` heads instead
        of raising."""
        if score not in SEPARATION_SCORES:
            raise ValueError(f"unknown separation score {score!r}; expected one of {sorted(SEPARATION_SCORES)}")
        self.score, self.k, self.at_most_heads, self.score_options = score, int(k), at_most_heads, score_options

    def scores(self, visit: SiteVisit) -> torch.Tensor:
        """``[heads]`` float32 separation scores of the visit, on the visit's device."""
        return frame_separation(visit, self.score, **self.score_options)

    def select(self, visit: SiteVisit) -> torch.Tensor:
        return self.selection(visit)[0]

    def selection(self, visit: SiteVisit) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask and the top-``k`` heads, ranked on the visit's device (no host read)."""
        k = min(self.k, visit.site.heads) if self.at_most_heads else self.k
        self._check_k(k, visit.site.heads)
        if visit.layout.frames < 2:
            raise ValueError(f"{self!r} ranks heads by how they separate frames; a video of one frame has none")
        scores = self.scores(visit)
        heads = torch.topk(scores, k, largest=HIGHER_IS_BETTER[self.score]).indices.sort().values
        mask = torch.zeros(visit.site.heads, dtype=torch.bool, device=scores.device)
        mask[heads] = True
        return mask, heads

    def __repr__(self) -> str:
        clip = ", at_most_heads=True" if self.at_most_heads else ""
        return f"TopKHeads({self.score!r}, k={self.k}{clip})"


class RandomHeads(HeadSelector):
    """``k`` heads drawn uniformly per (step, layer), reproducibly from ``seed``."""

    def __init__(self, k: int = 5, seed: int = 0) -> None:
        self.k, self.seed = int(k), int(seed)

    def select(self, visit: SiteVisit) -> torch.Tensor:
        self._check_k(self.k, visit.site.heads)
        key = zlib.crc32(f"{self.seed}:{visit.step}:{visit.layer}".encode())
        generator = torch.Generator().manual_seed(key)
        mask = torch.zeros(visit.site.heads, dtype=torch.bool)
        mask[torch.randperm(visit.site.heads, generator=generator)[: self.k]] = True
        return mask

    def __repr__(self) -> str:
        return f"RandomHeads(k={self.k}, seed={self.seed})"


def _device_of(visit: SiteVisit) -> torch.device:
    """The device of the visit's site tensors (the model's)."""
    return next(iter(visit.tensors.values())).device
