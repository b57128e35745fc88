"""Views and masks of a site's tokens: visual tokens by frame, attended key slots."""

from __future__ import annotations

import torch

from vidinterp.sites import SiteVisit

__all__ = ["frames_view", "key_padding_mask"]


def frames_view(visual: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, H, P, d]`` visual tokens -> ``[B, H, F, h*w, d]`` (tokens are frame-major)."""
    batch, heads, tokens, dim = visual.shape
    return visual.reshape(batch, heads, frames, tokens // frames, dim)


def key_padding_mask(visit: SiteVisit) -> torch.Tensor | None:
    """Which key slots of a joint site's whole sequence the model attends to: ``[B, S]`` bool
    (analysed rows, ``S`` tokens of ``visit.get("k", "all")``), False at padded prompt slots
    (:attr:`~vidinterp.layout.TokenLayout.prompt_mask`). ``None`` when every slot is attended:
    the layout has no prompt mask, or the site is not joint."""
    layout = visit.layout
    if visit.site.kind != "joint" or layout.prompt_mask is None:
        return None
    keys = visit.get("k", "all")
    mask = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool, device=keys.device)
    mask[:, layout.prompt] = layout.prompt_mask[layout.analysed_rows].to(keys.device, torch.bool)
    return mask
