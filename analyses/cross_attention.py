"""Cross-attention maps: how strongly each visual query matches each concept key.

``CA[c, p] = mean_h <q_x[p], k_c>`` per (layer, step), averaged over the selected layers and
steps (docs/methods.md, "Cross attention"; CogVideoX reference: rotary-applied visual query times
concept key, mean over heads). ``k_c`` is the concept-stream key, or the prompt keys of the
concept's words for models without a stream (Wan).
"""

from __future__ import annotations

import torch

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
        query = visit.get("q", "visual").float()  # [B, H, P, d]
        key = visit.get("k", "concept").float()  # [B, H, C, d]
        return torch.einsum("bhpd,bhcd->cp", query, key) / (query.shape[0] * query.shape[1])
