"""Hook points: identity modules placed exactly where a tensor exists.

A :class:`HookPoint` returns its input unchanged. Because it is an ``nn.Module`` that lives in the
model's module tree, plain torch forward hooks and nnsight both reach it by name, and whatever a
hook returns replaces the tensor for the rest of the computation (ablation, patching).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HookPoint"]


class HookPoint(nn.Module):
    """Identity module marking one named activation, e.g. ``blocks.3.attn.hook_q``.

    Tensors passing through hook points of attention sites have the layout
    ``[batch, heads, tokens, head_dim]`` (see :mod:`vidinterp.sites`).
    """

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor
