"""Cross-attention maps: how strongly each visual query matches each concept key.

``CA[c, p] = mean_h <q_x[p], k_c>`` per (layer, step), averaged over the selected layers and
steps (docs/methods.md, "Cross attention"; CogVideoX reference: rotary-applied visual query times
concept key, mean over heads). ``k_c`` is the concept-stream key, or the prompt keys of the
concept's words for models without a stream (Wan). The product is the visit's shared
:func:`~vidinterp.kernels.surrogate.concept_qk_scores` (also read by the QK-peak surrogates).
"""

from __future__ import annotations

import torch

from vidinterp.kernels.surrogate import concept_qk_scores
from vidinterp.maps import MapAnalysis
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["CrossAttention"]


@register_analysis
class CrossAttention(MapAnalysis):
    """Cross-attention map ``(concept, frame, y, x)``; see :class:`MapAnalysis` for options."""

    name = "cross_attention"
    requires = (("q", "visual"), ("k", "concept"))
    default = True

    def visit_map(self, visit: SiteVisit) -> torch.Tensor:
        scores = concept_qk_scores(visit)  # [B, H, C, P], <q, k> / sqrt(d)
        return scores.mean(dim=(0, 1)) * visit.get("q", "visual").shape[-1] ** 0.5
