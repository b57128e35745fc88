"""Surrogate tokens: which visual token stands in for a concept (QK-peak probing).

``QKPeak()`` picks, per concept, head and latent frame, the visual token whose query best
matches the concept key: ``s(c, h, f) = argmax_{p in f} <q_x[p], k_c> / sqrt(d)`` (METHODS.md).
``QKPeak(per="video")`` picks one token per video (Table 10); ``HiNorm()`` the visual token with
the largest output norm per frame, whatever the concept (Table 9).
"""

from __future__ import annotations

from typing import Literal

import torch

from vidinterp.analyses._maps import frames_view
from vidinterp.sites import SiteVisit

__all__ = ["SurrogateSelector", "QKPeak", "HiNorm", "qk_scores"]


def qk_scores(visit: SiteVisit) -> torch.Tensor:
    """``<q_x[p], k_c> / sqrt(d)`` as ``[B, H, C, P]`` float32."""
    query = visit.get("q", "visual").float()
    key = visit.get("k", "concept").float()
    return torch.einsum("bhpd,bhcd->bhcp", query, key) / query.shape[-1] ** 0.5


class SurrogateSelector:
    """Chooses surrogate tokens; :meth:`positions` returns global visual-token indices
    ``[B, H, C, F]`` (the token standing in for concept ``c`` in frame ``f``)."""

    requires: tuple[tuple[str, str], ...] = ()

    def positions(self, visit: SiteVisit) -> torch.Tensor:
        raise NotImplementedError


class QKPeak(SurrogateSelector):
    """QK-peak probing. ``per="frame"`` (default): one token per frame; ``"video"``: the single
    best token of the whole video, used for every frame."""

    requires = (("q", "visual"), ("k", "concept"))

    def __init__(self, per: Literal["frame", "video"] = "frame") -> None:
        if per not in ("frame", "video"):
            raise ValueError(f"per must be 'frame' or 'video', got {per!r}")
        self.per = per

    def positions(self, visit: SiteVisit) -> torch.Tensor:
        scores = qk_scores(visit)  # [B, H, C, P]
        frames = visit.layout.frames
        if self.per == "video":
            return scores.argmax(dim=-1, keepdim=True).expand(*scores.shape[:3], frames)
        batch, heads, concepts, tokens = scores.shape
        per_frame = tokens // frames
        local = scores.reshape(batch, heads, concepts, frames, per_frame).argmax(dim=-1)
        return local + torch.arange(frames, device=local.device) * per_frame

    def __repr__(self) -> str:
        return f"QKPeak(per={self.per!r})"


class HiNorm(SurrogateSelector):
    """The visual token with the largest output norm ``||o_x[p]||`` in each frame, the same for
    every concept."""

    requires = (("z", "visual"), ("k", "concept"))

    def positions(self, visit: SiteVisit) -> torch.Tensor:
        outputs = frames_view(visit.get("z", "visual").float(), visit.layout.frames)  # [B, H, F, n, d]
        local = outputs.norm(dim=-1).argmax(dim=-1)  # [B, H, F]
        frames, per_frame = outputs.shape[2], outputs.shape[3]
        index = local + torch.arange(frames, device=local.device) * per_frame
        concepts = visit.get("k", "concept").shape[2]
        return index.unsqueeze(2).expand(-1, -1, concepts, -1)

    def __repr__(self) -> str:
        return "HiNorm()"
