"""Classifier-free-guidance branches: which rows of a transformer call an analysis reads.

diffusers pipelines announce every denoising call with ``transformer.cache_context(name)``:
``"cond"`` (a call of the conditional branch only), ``"uncond"`` (the unconditional or negative
branch only) and ``"cond_uncond"`` (both branches stacked in one batch, unconditional rows first).
vidinterp reads that announcement through a stateful diffusers hook (:class:`BranchListener`,
the mechanism diffusers' own caches use) and chooses the rows of the analysed branch:

==================  ============================  ===========================================
call announced as   ``branch="conditional"``      ``branch="unconditional"``
==================  ============================  ===========================================
``"cond"``          every row                     none (the call is not analysed)
``"uncond"``        none                          every row
``"cond_uncond"``   the second half when batched  the first half when batched, else none
nothing (fallback)  the second half when batched  the first half when batched, else none
==================  ============================  ===========================================

"Batched" is what the driver knows: :func:`vidinterp.trace` sets it from the guidance it runs
(``Adapter.cfg_batched``); without that knowledge (``None``, e.g. under :func:`vidinterp.hooked`)
a ``"cond_uncond"`` call of an even batch is taken as stacked. The fallback covers pipelines that
announce nothing (Stable Diffusion 3) and hand-written loops. An adapter may also mark calls that
run a perturbed branch (SD3's skip-layer guidance) with ``Adapter.is_perturbed_call``; they are
never analysed.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

__all__ = ["Branch", "BRANCHES", "branch_rows", "BranchListener", "listen_for_branches"]

Branch = Literal["conditional", "unconditional"]
BRANCHES = ("conditional", "unconditional")
#: name of vidinterp's hook in a transformer's diffusers hook registry
HOOK_NAME = "vidinterp_branches"


def branch_rows(announced: str | None, batch: int, batched: bool | None, branch: Branch = "conditional") -> slice | None:
    """Rows of ``branch`` in a call of ``batch`` rows announced as ``announced`` (see the module
    docstring), or ``None`` when the call holds no row of it."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    if announced == "cond":
        return slice(0, batch) if branch == "conditional" else None
    if announced == "uncond":
        return slice(0, batch) if branch == "unconditional" else None
    stacked = batch % 2 == 0 if batched is None and announced == "cond_uncond" else bool(batched)
    if not stacked:
        return slice(0, batch) if branch == "conditional" else None
    return slice(batch // 2, batch) if branch == "conditional" else slice(0, batch // 2)


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _Announcement(StateManager):
    """Receives the cache context a pipeline sets (diffusers hands it to every stateful hook's
    state managers under the transformer)."""

    def __init__(self) -> None:
        super().__init__(_NoState)

    @property
    def name(self) -> str | None:
        """The announced call's name, ``None`` outside any ``cache_context``."""
        return None if self._context is None else self._context.name


class _AnnouncementHook(ModelHook):
    """A stateful diffusers hook that only holds an :class:`_Announcement`."""

    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.announcement = _Announcement()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class BranchListener(torch.nn.Module):
    """Follows the branch names a pipeline announces to a transformer.

    Added as a child module of the transformer (never called), it carries the stateful diffusers
    hook that ``transformer.cache_context(name)`` informs, so the transformer's own ``forward``
    stays untouched (other tools that wrap it, such as nnsight, keep working). Torch hooks on the
    transformer hand every call, with the name announced for it, to ``before_call(module, args,
    kwargs, announced)`` and call ``after_call()`` when it returns.
    """

    NAME = "vidinterp_branches"

    def __init__(self, transformer: torch.nn.Module, before_call, after_call) -> None:
        super().__init__()
        hook = _AnnouncementHook()
        HookRegistry.check_if_exists_or_initialize(self).register_hook(hook, HOOK_NAME)
        self._transformer = (transformer,)  # a tuple: no submodule cycle
        self._created_registry = not hasattr(transformer, "_diffusers_hook")
        transformer.add_module(self.NAME, self)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
        self._handles = [
            transformer.register_forward_pre_hook(
                lambda module, args, kwargs: before_call(module, args, kwargs, hook.announcement.name), with_kwargs=True),
            transformer.register_forward_hook(lambda module, args, output: after_call()),
        ]

    def remove(self) -> None:
        """Detach from the transformer, leaving it as it was found."""
        transformer = self._transformer[0]
        for handle in self._handles:
            handle.remove()
        del transformer._modules[self.NAME]
        if self._created_registry:
            del transformer._diffusers_hook
        else:
            transformer._diffusers_hook.invalidate_child_registries_cache()


def listen_for_branches(transformer: torch.nn.Module, before_call, after_call) -> BranchListener:
    """Install a :class:`BranchListener` on ``transformer``; ``.remove()`` it to undo."""
    return BranchListener(transformer, before_call, after_call)
