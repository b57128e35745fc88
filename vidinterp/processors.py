"""Site processors: how attention calls reach the hook points.

Every site's attention processor is replaced, for the duration of a trace, by a
:class:`SiteProcessor`: an ``nn.Module`` whose children are the site's hook points, so torch
hooks and nnsight reach them by name. One method, :meth:`SiteProcessor.attend`, runs one
attention call through them: queries, keys and values (``[batch, heads, tokens, head_dim]``,
after q/k norm and rotary) pass ``hook_q``/``hook_k``/``hook_v``, the attention output passes
``hook_z``, and, when the call is analysed, the observer (the trace's runtime) receives them.

Two ways to get there:

* **At diffusers' attention dispatch** (:class:`DispatchSiteProcessor`, the default). Most
  models' stock processors compute q, k and v and then call
  ``diffusers.models.attention_dispatch.dispatch_attention_fn``, which runs the attention
  backend the user chose (``transformer.set_attention_backend``: native SDPA, flash-attn, sage,
  ...). The wrapper keeps the stock (or the user's own) processor doing all the math; while it
  runs, the name ``dispatch_attention_fn`` in that processor's module routes the call through
  :meth:`SiteProcessor.attend` and then on to the real dispatch with the same arguments, so the
  chosen backend stays in use. A processor that never calls the dispatch is a clear error.
* **A rewritten processor** (an adapter's :class:`SiteProcessor` subclass) for models whose stock
  processor calls ``torch.nn.functional.scaled_dot_product_attention`` directly (CogVideoX, SD3).
  It reproduces the stock math exactly and computes attention with :func:`attention`, which
  also honours a backend the user set.
"""

from __future__ import annotations

import inspect
import sys
from contextvars import ContextVar
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vidinterp.hooks import HookPoint
from vidinterp.sites import SiteSpec

__all__ = ["SiteObserver", "SiteProcessor", "DispatchSiteProcessor", "attention", "intercepting_dispatch"]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SiteObserver(Protocol):
    """What a site processor needs from the trace it runs in."""

    active: bool

    def observe_site(self, site: "SiteProcessor", attn: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, output: torch.Tensor) -> None:
        """Receive one analysed attention call of ``site`` (tensors after the hook points)."""


class SiteProcessor(nn.Module):
    """The hook points of one site and the one path attention calls take through them.

    Hook points (``[batch, heads, tokens, head_dim]``): ``hook_q``, ``hook_k``, ``hook_v``,
    ``hook_z``; on concept-stream sites also ``hook_concept_q|k|v|z``; for each extra attention
    role of the site (``SiteSpec.attentions``, e.g. Wan image-to-video's ``"image"``) also
    ``hook_<role>_k``, ``hook_<role>_v``, ``hook_<role>_z``.
    """

    #: set by an intervention (:mod:`vidinterp.interventions`) for the calls it perturbs:
    #: ``override(processor, q, k, v, compute) -> z`` computes the main attention instead of the
    #: model's ``compute`` (the hook points still fire around it); ``None``: the model's own.
    override: Callable | None = None

    def __init__(self, spec: SiteSpec, original: object, observer: SiteObserver) -> None:
        super().__init__()
        self.spec, self.original, self.observer = spec, original, observer
        for name in spec.hook_names + spec.extra_hook_names:
            setattr(self, name, HookPoint())

    def forward(self, *args, **kwargs):  # nn.Module protocol; diffusers calls the processor itself
        return self(*args, **kwargs)

    def attend(self, attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               compute: Attend) -> torch.Tensor:
        """Run the site's attention ``compute(q, k, v) -> z`` (all ``[B, H, tokens, d]``)
        through the hook points; an analysed call goes to the observer."""
        query, key, value = self.hook_q(query), self.hook_k(key), self.hook_v(value)
        override = self.override
        output = self.hook_z(compute(query, key, value) if override is None
                             else override(self, query, key, value, compute))
        if self.observer.active:
            self.observer.observe_site(self, attn, query, key, value, output)
        return output

    def extra_repr(self) -> str:
        return f"site={self.spec.name!r}, heads={self.spec.heads}, head_dim={self.spec.head_dim}"


def attention(original: object, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of ``[B, H, tokens, d]`` tensors as a rewritten processor
    computes it: through ``dispatch_attention_fn`` when the user set an attention backend (on
    the ``original`` processor, or diffusers' active backend when it is not native), else
    exactly as the stock processors do (``F.scaled_dot_product_attention``)."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        dispatch_attention_fn,
    )

    backend = getattr(original, "_attention_backend", None)
    if backend is None and _AttentionBackendRegistry._active_backend == AttentionBackendName.NATIVE:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
    output = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask,
                                   backend=backend, parallel_config=getattr(original, "_parallel_config", None))
    return output.transpose(1, 2)


#: the dispatching site whose processor is running (``None`` outside any)
_RUNNING: ContextVar["DispatchSiteProcessor | None"] = ContextVar("vidinterp_dispatching_site", default=None)


class DispatchSiteProcessor(SiteProcessor):
    """Wraps a processor that calls ``dispatch_attention_fn``; see the module docstring. Its
    ``__call__`` takes the original processor's signature (diffusers passes a processor only the
    keyword arguments its signature names)."""

    def __new__(cls, spec: SiteSpec, original: object, observer: SiteObserver):
        mirrored = _MIRRORED.get(type(original))
        if mirrored is None:
            def __call__(self, attn, *args, **kwargs):
                return self._run(attn, *args, **kwargs)

            __call__.__signature__ = inspect.signature(type(original).__call__)
            mirrored = type(f"Dispatching{type(original).__name__}", (cls,), {"__call__": __call__})
            _MIRRORED[type(original)] = mirrored
        return super().__new__(mirrored)

    def __init__(self, spec: SiteSpec, original: object, observer: SiteObserver) -> None:
        super().__init__(spec, original, observer)
        self._calling: tuple[nn.Module, ...] = ()  # the attention module of the running call (a tuple: no submodule)
        self._dispatches = 0

    def _run(self, attn: nn.Module, *args, **kwargs):
        self._calling, self._dispatches = (attn,), 0
        running = _RUNNING.set(self)
        try:
            output = self.original(attn, *args, **kwargs)
        finally:
            _RUNNING.reset(running)
        if self._dispatches != len(self.spec.attentions):
            raise RuntimeError(
                f"the processor of site {self.spec.name} ({type(self.original).__name__}) made {self._dispatches} "
                f"call(s) to diffusers' dispatch_attention_fn where {len(self.spec.attentions)} "
                f"({', '.join(self.spec.attentions)}) were expected; vidinterp captures attention there, so a processor "
                f"that computes attention another way (e.g. F.scaled_dot_product_attention) needs an adapter processor"
            )
        return output

    def dispatched(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dispatch: Callable) -> torch.Tensor:
        """One call of ``dispatch_attention_fn`` by the wrapped processor (``[B, tokens, H, d]``
        tensors, as the dispatch takes them); ``dispatch(q, k, v)`` is the real call."""
        role = self.spec.attentions[min(self._dispatches, len(self.spec.attentions) - 1)]
        self._dispatches += 1

        def compute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

        if role == "main":
            return self.attend(self._calling[0], query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                               compute).transpose(1, 2)
        key = getattr(self, f"hook_{role}_k")(key.transpose(1, 2))
        value = getattr(self, f"hook_{role}_v")(value.transpose(1, 2))
        return getattr(self, f"hook_{role}_z")(compute(query.transpose(1, 2), key, value)).transpose(1, 2)


_MIRRORED: dict[type, type] = {}
#: modules whose ``dispatch_attention_fn`` is routed, with the real function and a use count
_INTERCEPTED: dict[str, list] = {}


def _router(real: Callable) -> Callable:
    def dispatch_attention_fn(query, key, value, *args, **kwargs):
        site = _RUNNING.get()
        if site is None:
            return real(query, key, value, *args, **kwargs)
        return site.dispatched(query, key, value, lambda q, k, v: real(q, k, v, *args, **kwargs))

    dispatch_attention_fn.__wrapped__ = real
    return dispatch_attention_fn


class intercepting_dispatch:
    """Route the ``dispatch_attention_fn`` of the modules defining ``processors`` through the
    running :class:`DispatchSiteProcessor` (calls from anywhere else pass straight through);
    :meth:`release` puts the real function back once no trace needs it."""

    def __init__(self, processors: list[DispatchSiteProcessor]) -> None:
        # A processor defined where no dispatch is imported may still reach one (e.g. by wrapping
        # a stock processor); one that reaches none fails its call with a clear error.
        self.modules = sorted({name for name in (type(processor.original).__module__ for processor in processors)
                               if hasattr(sys.modules[name], "dispatch_attention_fn")})
        for name in self.modules:
            module = sys.modules[name]
            if name in _INTERCEPTED:
                _INTERCEPTED[name][1] += 1
            else:
                _INTERCEPTED[name] = [module.dispatch_attention_fn, 1]
                module.dispatch_attention_fn = _router(module.dispatch_attention_fn)

    def release(self) -> None:
        for name in self.modules:
            entry = _INTERCEPTED[name]
            entry[1] -= 1
            if entry[1] == 0:
                sys.modules[name].dispatch_attention_fn = entry[0]
                del _INTERCEPTED[name]
