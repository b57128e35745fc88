"""Hook points: identity modules placed exactly where a tensor exists.

A :class:`HookPoint` returns its input unchanged. Because it is an ``nn.Module`` that lives in the
model's module tree, plain torch forward hooks and nnsight both reach it by name, and whatever a
hook returns replaces the tensor for the rest of the computation (ablation, patching). Hooks
handed to :func:`vidinterp.trace` may also take a ``context`` argument (:class:`HookContext`:
step, timestep, site, branch) to act on one step or branch only, and must return ``None`` or a
tensor of the hook point's shape, dtype and device (checked at every call, so a wrong one fails
naming the hook point).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["HookPoint", "HookContext", "with_context", "takes_context", "checked_replacement"]


class HookPoint(nn.Module):
    """Identity module marking one named activation, e.g. ``blocks.3.attn.hook_q``.

    Tensors passing through hook points of attention sites have the layout
    ``[batch, heads, tokens, head_dim]`` (see :mod:`vidinterp.sites`).
    """

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@dataclass(frozen=True)
class HookContext:
    """Where a hook point fires, for hooks that act on one step or branch (as TransformerLens
    hooks receive their ``hook``).

    Attributes:
        name: the hook point's name, e.g. ``"blocks.3.attn.hook_z"``.
        site: the site's :class:`~vidinterp.sites.SiteSpec`.
        step: the denoising step index.
        timestep: the step's timestep.
        announced: the branch name the pipeline announced for the call (``"cond"``,
            ``"uncond"``, ``"cond_uncond"``) or ``None``.
        analysed_rows: the call's rows of the trace's analysed branch (``None``: the call is not
            analysed: another branch, a perturbed branch, or a step outside the trace's steps).
    """

    name: str
    site: Any
    step: int
    timestep: float
    announced: str | None
    analysed_rows: slice | None


def takes_context(function: Callable) -> bool:
    """Whether a hook takes a ``context`` argument (callables without an inspectable signature,
    such as some builtins, take none)."""
    try:
        return "context" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def checked_replacement(name: str, output: Any, replacement: Any) -> Any:
    """What a hook at hook point ``name`` returned, checked: ``None`` (keep ``output``) or a
    tensor of ``output``'s shape, dtype and device. Anything else raises (``TypeError`` for a
    non-tensor, ``ValueError`` for a tensor that does not fit) naming the hook point and what
    was expected, instead of failing somewhere downstream in the model."""
    if replacement is None or replacement is output or not isinstance(output, torch.Tensor):
        return replacement
    expected = (f"None (keep the tensor) or a tensor of the hook point's shape {list(output.shape)} "
                f"[batch, heads, tokens, head_dim], dtype {output.dtype} and device {output.device}")
    if not isinstance(replacement, torch.Tensor):
        raise TypeError(f"hook {name!r} returned {type(replacement).__name__}; a hook must return {expected}")
    if replacement.shape != output.shape or replacement.dtype != output.dtype or replacement.device != output.device:
        raise ValueError(
            f"hook {name!r} returned a tensor of shape {list(replacement.shape)}, dtype {replacement.dtype} on "
            f"{replacement.device}; a hook must return {expected}"
        )
    return replacement


def with_context(function: Callable, name: str, site: Any, runtime: Any) -> Callable:
    """A torch forward hook calling ``function(module, args, output)``, and passing
    ``context=HookContext(...)`` too when ``function`` takes a ``context`` argument; what it
    returns is checked by :func:`checked_replacement` (``None`` or a tensor like ``output``)."""
    if not takes_context(function):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            return checked_replacement(name, output, function(module, args, output))

        return hook

    def hook_with_context(module: nn.Module, args: tuple, output: torch.Tensor):
        rows = runtime.layout.analysed_rows if runtime.active else None
        context = HookContext(name, site, runtime.step, runtime.timestep, runtime.announced, rows)
        return checked_replacement(name, output, function(module, args, output, context=context))

    return hook_with_context
