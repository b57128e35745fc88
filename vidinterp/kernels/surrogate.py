"""Surrogate tokens: which visual token stands in for a concept (QK-peak probing).

``QKPeak()`` picks, per concept, head and latent frame, the visual token whose query best
matches the concept key: ``s(c, h, f) = argmax_{p in f} <q_x[p], k_c> / sqrt(d)``.
``QKPeak(per="video")`` picks one token per video (IMAP paper, Table 10);
``QKPeak(keys="prompt")`` matches the prompt key of the concept's word instead of the concept
stream's key (an option of the official IMAP code); ``HiNorm()`` the visual token with the largest
output norm per frame, whatever the concept (Table 9).

The QK scores and the positions are computed once per visit (:meth:`SiteVisit.shared`) however
many analyses ask: IMAP, GramCol, QK matching and cross attention share one ``q x k_c`` product.
"""

from __future__ import annotations

from typing import Literal

import torch

from vidinterp.context import TraceContext
from vidinterp.kernels.tokens import frames_view
from vidinterp.sites import SiteVisit

__all__ = ["SurrogateSelector", "QKPeak", "HiNorm", "qk_scores", "concept_qk_scores"]


def qk_scores(visit: SiteVisit, key: torch.Tensor | None = None) -> torch.Tensor:
    """``<q_x[p], k_c> / sqrt(d)`` as ``[B, H, C, P]`` float32; ``key`` ``[B, H, C, d]``
    defaults to the concept keys."""
    query = visit.get("q", "visual").float()
    key = visit.get("k", "concept").float() if key is None else key.float()
    return torch.einsum("bhpd,bhcd->bhcp", query, key) / query.shape[-1] ** 0.5


def concept_qk_scores(visit: SiteVisit) -> torch.Tensor:
    """:func:`qk_scores` against the concept keys, computed once per visit; do not modify."""
    return visit.shared(("qk_scores", "concept"), lambda: qk_scores(visit))


class SurrogateSelector:
    """Chooses surrogate tokens; :meth:`positions` returns global visual-token indices
    ``[B, H, C, F]`` (the token standing in for concept ``c`` in frame ``f``)."""

    requires: tuple[tuple[str, str], ...] = ()

    def bind(self, context: TraceContext) -> None:
        """Read what the selector needs from the trace context before the first visit."""

    def matched_keys(self, visit: SiteVisit) -> torch.Tensor:
        """The keys a QK map of this selector compares visual queries with, one per concept
        slot, ``[B, H, slots, d]`` (default: the concept keys)."""
        return visit.get("k", "concept")

    def scores(self, visit: SiteVisit) -> torch.Tensor:
        """:func:`qk_scores` of the visual queries against :meth:`matched_keys`, ``[B, H,
        slots, P]`` float32 (do not modify: selectors may share it within a visit)."""
        return qk_scores(visit, self.matched_keys(visit))

    def positions(self, visit: SiteVisit) -> torch.Tensor:
        raise NotImplementedError


class QKPeak(SurrogateSelector):
    """QK-peak probing. ``per="frame"`` (default): one token per frame; ``"video"``: the single
    best token of the whole video, used for every frame. ``keys="concept"`` (default): the
    concept stream's keys; ``"prompt"``: the prompt key at the concept's word in the prompt
    (its first sub-token, or the mean of its sub-tokens, as the trace's concept reduction);
    zero-embedding padding slots (``concept_slots``) read the prompt key at their own slot
    index, as the official code, which pads concepts and text to the same length."""

    def __init__(self, per: Literal["frame", "video"] = "frame", keys: Literal["concept", "prompt"] = "concept") -> None:
        if per not in ("frame", "video"):
            raise ValueError(f"per must be 'frame' or 'video', got {per!r}")
        if keys not in ("concept", "prompt"):
            raise ValueError(f"keys must be 'concept' or 'prompt', got {keys!r}")
        self.per, self.keys = per, keys
        self.requires = (("q", "visual"), ("k", keys))
        self.words = None
        self.slots = 0

    def bind(self, context: TraceContext) -> None:
        if self.keys == "prompt":
            self.words, self.slots = context.prompt_words(), context.concept_slots

    def matched_keys(self, visit: SiteVisit) -> torch.Tensor:
        if self.keys == "concept":
            return visit.get("k", "concept")
        prompt = visit.get("k", "prompt")
        named = self.words.gather(prompt)
        padding = prompt[:, :, named.shape[2]: self.slots]
        if named.shape[2] + padding.shape[2] < self.slots:
            raise ValueError(f"{self.slots} concept slots need as many prompt slots; this call has {prompt.shape[2]}")
        return torch.cat([named, padding], dim=2)

    def scores(self, visit: SiteVisit) -> torch.Tensor:
        if self.keys == "concept":
            return concept_qk_scores(visit)
        return visit.shared(("qk_scores", "prompt", self.slots), lambda: qk_scores(visit, self.matched_keys(visit)))

    def positions(self, visit: SiteVisit) -> torch.Tensor:
        """Global visual-token indices ``[B, H, C, F]``, computed once per visit per setting."""
        return visit.shared(("qk_peak", self.per, self.keys, self.slots), lambda: self._positions(visit))

    def _positions(self, visit: SiteVisit) -> torch.Tensor:
        scores = self.scores(visit)  # [B, H, C, P]
        frames = visit.layout.frames
        if self.per == "video":
            return scores.argmax(dim=-1, keepdim=True).expand(*scores.shape[:3], frames)
        batch, heads, concepts, tokens = scores.shape
        per_frame = tokens // frames
        local = scores.reshape(batch, heads, concepts, frames, per_frame).argmax(dim=-1)
        return local + torch.arange(frames, device=local.device) * per_frame

    def __repr__(self) -> str:
        return f"QKPeak(per={self.per!r}, keys={self.keys!r})"


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
