"""ConceptAttention (ICML 2025): concept saliency in the attention-output space.

``CAttn[c, p] = sum_h <o_c[c], o_x[p]>``: dot products of the per-head attention outputs of
concept tokens and visual tokens before the output projection, summed over heads, averaged
over the selected layers and steps; optional softmax over concepts
(docs/methods.md, "ConceptAttention").
"""

from __future__ import annotations

import torch

from vidinterp.maps import MapAnalysis
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["ConceptAttention"]


@register_analysis
class ConceptAttention(MapAnalysis):
    """ConceptAttention map ``(concept, frame, y, x)``; see :class:`MapAnalysis` for options."""

    name = "concept_attention"
    requires = (("z", "visual"), ("z", "concept"))
    site_kinds = ("joint",)
    default = True

    def visit_map(self, visit: SiteVisit) -> torch.Tensor:
        visual = visit.get("z", "visual").float()  # [B, H, P, d]
        concepts = visit.get("z", "concept").float()  # [B, H, C, d]
        return torch.einsum("bhcd,bhpd->cp", concepts, visual) / visual.shape[0]
