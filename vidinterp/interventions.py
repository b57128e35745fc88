"""Interventions: changes to how a traced pipeline samples, passed as ``vidinterp.trace(...,
interventions=[...])``.

:class:`CrossFrameGuidance` is DiffTrack's cross-frame attention guidance (CAG; docs/methods.md,
"Cross-frame attention guidance"). Besides the pipeline's own transformer calls, every
conditional call runs once more as a **perturbed** branch in which, in the chosen layers, each
visual token attends only to the prompt tokens and to the visual tokens of its own latent (token)
frame (a masked softmax, renormalised over the allowed keys; prompt tokens keep their full
attention), and the denoiser output becomes

    eps = eps_u + w (eps_c - eps_u) + s (eps_c - eps_ptb)

with ``w`` the pipeline's classifier-free-guidance (CFG) weight and ``s`` the guidance scale.

How, without touching the pipeline: a forward hook on the transformer replaces the output rows
of the conditional branch, ``eps_c``, by

    eps_c' = eps_c + (s / w) (eps_c - eps_ptb)

and the pipeline's own CFG, ``eps_u + w (eps_c' - eps_u)``, expands to the formula above. Without
a CFG branch (``w <= 1``: the pipeline runs none, e.g. ``guidance_scale=1``, or HunyuanVideo and
Flux without ``true_cfg_scale``) the pipeline uses ``eps_c'`` as it is, with ``w = 1``:
``eps = eps_c + s (eps_c - eps_ptb)``, the formula above with ``w = 1``. ``w`` comes from the
arguments the trace passes the pipeline (:func:`cfg_weight`); the hook checks it against the
branches the pipeline actually runs (an unconditional branch exactly when ``w > 1``) and raises
otherwise. CFG schedules that change ``w`` per step (CogVideoX's ``use_dynamic_cfg``) are refused.

The perturbed attention (:func:`frame_local_attention`) never forms the ``(P+T) x (P+T)`` mask
or attention matrix: per latent frame, one scaled-dot-product attention of that frame's visual
queries over ``[prompt keys, the frame's keys]`` (all frames batched as one call), and one of the
prompt queries over every key.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.nn.functional as F

from vidinterp.branches import branch_rows

if TYPE_CHECKING:
    from vidinterp.adapter import Adapter
    from vidinterp.processors import SiteProcessor
    from vidinterp.runtime import Runtime
    from vidinterp.sites import SiteGraph

__all__ = ["Intervention", "CrossFrameGuidance", "frame_local_attention", "cfg_weight", "check_interventions",
           "PERTURBED_BRANCH"]

#: the ``cache_context`` name of the perturbed calls (what ``HookContext.announced`` reads)
PERTURBED_BRANCH = "cross_frame_perturbed"


def frame_local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, frames: int,
                          visual: slice, prompt: slice | None = None,
                          prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention in which visual queries see only the prompt keys and their own frame's keys.

    Args:
        query, key, value: ``[B, H, N, d]`` over one token sequence (``N`` = visual + prompt at
            a joint site, visual only at a self site).
        frames: latent (token) frames; the visual tokens ``visual`` are frame-major, ``n =
            P / frames`` per frame.
        visual: the visual tokens' slice of the sequence.
        prompt: the prompt tokens' slice (``None``: a self site, no prompt keys).
        prompt_mask: optional ``[B, T]`` bool, True for prompt slots the model attends to.

    Returns:
        ``[B, H, N, d]``: visual rows ``softmax(q k_allowed^T / sqrt(d)) v_allowed`` over the
        prompt keys and the keys of their own frame (renormalised over exactly those); prompt
        rows over every key (but the masked prompt slots). The largest intermediate is one
        frame's ``n x (T + n)`` scores per head and batch row, never ``N x N``.
    """
    batch, heads, tokens, _ = query.shape
    visual_tokens = visual.stop - visual.start
    if visual_tokens % frames:
        raise ValueError(f"{visual_tokens} visual tokens do not split into {frames} frames")
    per_frame = visual_tokens // frames
    output = query.new_empty(batch, heads, tokens, value.shape[-1])

    def by_frame(tensor: torch.Tensor) -> torch.Tensor:  # [B, H, P, d] -> [B*F, H, n, d]
        shaped = tensor[:, :, visual].unflatten(2, (frames, per_frame))
        return shaped.transpose(1, 2).reshape(batch * frames, heads, per_frame, tensor.shape[-1])

    keys, values, mask = by_frame(key), by_frame(value), None
    if prompt is not None:
        prompt_keys = key[:, :, prompt].unsqueeze(1).expand(-1, frames, -1, -1, -1).flatten(0, 1)
        prompt_values = value[:, :, prompt].unsqueeze(1).expand(-1, frames, -1, -1, -1).flatten(0, 1)
        keys, values = torch.cat([prompt_keys, keys], dim=2), torch.cat([prompt_values, values], dim=2)
        if prompt_mask is not None:
            allowed = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(batch, per_frame, dtype=torch.bool)], dim=1)
            mask = allowed.repeat_interleave(frames, dim=0)[:, None, None, :]
    local = F.scaled_dot_product_attention(by_frame(query), keys, values, attn_mask=mask)
    output[:, :, visual] = local.reshape(batch, frames, heads, per_frame, -1).transpose(1, 2).flatten(2, 3)
    if prompt is not None:
        mask = None
        if prompt_mask is not None:
            mask = torch.ones(batch, tokens, dtype=torch.bool, device=query.device)
            mask[:, prompt] = prompt_mask.bool()
            mask = mask[:, None, None, :]
        output[:, :, prompt] = F.scaled_dot_product_attention(query[:, :, prompt], key, value, attn_mask=mask)
    return output


class Intervention(ABC):
    """A change to sampling that a trace applies while it runs the pipeline.

    :meth:`check` runs before any model work (bad settings fail fast, the model untouched);
    :meth:`applied` is entered once the trace's sites are installed and exited, also on error,
    before they come off.
    """

    def check(self, adapter: "Adapter", geometry: tuple[int, int, int]) -> None:
        """Raise ``ValueError`` when the intervention cannot run on this model and geometry."""

    @abstractmethod
    def applied(self, adapter: "Adapter", runtime: "Runtime", graph: "SiteGraph",
                cfg_weight: float) -> Any:
        """A context manager applying the intervention; ``cfg_weight`` is the pipeline's CFG
        weight (``1.0``: no unconditional branch)."""


class CrossFrameGuidance(Intervention):
    """Cross-frame attention guidance (DiffTrack's CAG); see the module docstring.

    Args:
        scale: the guidance scale ``s >= 0``; ``0`` runs no perturbed branch at all (the video is
            the plain sampler's, bit for bit).
        layers: the layers ``l`` (site names ``blocks.{l}.*``) whose attention is made
            frame-local in the perturbed branch: every joint site (CogVideoX, HunyuanVideo,
            Mochi) or self site (Wan, SkyReels-V2, LTX-Video) of the layer; cross sites
            (prompt keys only) are unchanged. ``None``: every such layer.

    Example::

        vidinterp.trace(pipe, prompt="a dog running", concepts=["dog"],
                        interventions=[CrossFrameGuidance(scale=1.0, layers=[13, 14, 15])])
    """

    name = "cross_frame_guidance"

    def __init__(self, scale: float = 1.0, layers: Iterable[int] | None = None) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 or scale == float("inf"):
            raise ValueError(f"CrossFrameGuidance scale must be a finite number >= 0, got {scale!r}")
        self.scale = float(scale)
        if layers is not None:
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
                raise TypeError(f"CrossFrameGuidance layers must be None or integers, got {layers!r}")
            layers = list(layers)
            bad = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0]
            if bad or not layers:
                raise ValueError(f"CrossFrameGuidance layers must be a non-empty list of layer indices >= 0, got {layers!r}")
            layers = sorted(set(layers))
        self.layers: list[int] | None = layers

    def __repr__(self) -> str:
        return f"CrossFrameGuidance(scale={self.scale}, layers={self.layers})"

    # ---------------------------------------------------------------- setup
    def site_names(self, adapter: "Adapter") -> list[str]:
        """The sites made frame-local: joint and self sites of the chosen layers."""
        specs = [spec for spec in adapter.site_specs() if spec.kind in ("joint", "self")]
        available = sorted({spec.layer for spec in specs})
        if self.layers is not None:
            missing = [layer for layer in self.layers if layer not in available]
            if missing:
                raise ValueError(f"CrossFrameGuidance layers {missing} have no joint or self-attention site on "
                                 f"{adapter.model_name}; layers with one: {_ranges(available)}")
        return [spec.name for spec in specs if self.layers is None or spec.layer in self.layers]

    def check(self, adapter: "Adapter", geometry: tuple[int, int, int]) -> None:
        if not self.site_names(adapter):
            raise ValueError(f"CrossFrameGuidance needs sites that attend across frames; {adapter.model_name} "
                             f"({adapter.family}) has no joint or self-attention site")
        frames = adapter.layout_for(*geometry).frames
        if frames < 2:
            raise ValueError(f"CrossFrameGuidance needs at least 2 latent frames; {frames} at "
                             f"{geometry[0]} frames of {geometry[1]}x{geometry[2]} on {adapter.model_name}")

    # ---------------------------------------------------------------- running
    @contextmanager
    def applied(self, adapter: "Adapter", runtime: "Runtime", graph: "SiteGraph",
                cfg_weight: float) -> Iterator[None]:
        if self.scale == 0:  # no perturbed branch: plain sampling
            yield
            return
        sites = [graph[name] for name in self.site_names(adapter)]
        factor = self.scale / max(float(cfg_weight), 1.0)
        seen = {"conditional": False, "unconditional": False}

        def frame_local(processor: "SiteProcessor", query, key, value, compute):
            layout = runtime.layout
            joint = processor.spec.kind == "joint"
            expected = layout.visual_tokens + (layout.prompt_tokens if joint else 0)
            if query.shape[2] != expected or key.shape[2] != expected:
                raise RuntimeError(
                    f"CrossFrameGuidance at {processor.spec.name}: queries/keys of {query.shape[2]}/{key.shape[2]} "
                    f"tokens where the call's layout has {expected}")
            return frame_local_attention(
                query, key, value, frames=layout.frames,
                visual=layout.visual if joint else slice(0, layout.visual_tokens),
                prompt=layout.prompt if joint else None, prompt_mask=layout.prompt_mask if joint else None)

        def after_call(module, args, kwargs, output):
            if runtime.perturbing:
                return None
            batch, announced = runtime.layout.batch, runtime.announced
            rows = branch_rows(announced, batch, runtime.cfg_batched, "conditional")
            if branch_rows(announced, batch, runtime.cfg_batched, "unconditional") is not None:
                seen["unconditional"] = True
                if cfg_weight <= 1:
                    raise RuntimeError(
                        f"CrossFrameGuidance: the pipeline ran an unconditional branch (call announced as "
                        f"{announced!r}) although its CFG weight was taken as 1 (no CFG); eps_c' = eps_c + "
                        f"s (eps_c - eps_ptb) would be scaled by the pipeline's CFG weight")
            if rows is None:
                return None
            seen["conditional"] = True
            selected = rows != slice(0, batch)
            perturbed_args = tuple(_rows(value, rows, batch) for value in args) if selected else args
            perturbed_kwargs = {name: _rows(value, rows, batch) for name, value in kwargs.items()} if selected else kwargs
            runtime.perturbing = True
            for site in sites:
                site.override = frame_local
            try:
                with _announcing(module, PERTURBED_BRANCH):
                    perturbed = module(*perturbed_args, **perturbed_kwargs)
            finally:
                runtime.perturbing = False
                for site in sites:
                    site.override = None
            sample = _sample(output)
            conditional, perturbed = sample[rows].float(), _sample(perturbed).float()
            guided = (conditional + factor * (conditional - perturbed)).to(sample.dtype)
            if selected:
                guided = torch.cat([sample[:rows.start], guided, sample[rows.stop:]])
            return _with_sample(output, guided)

        handle = adapter.transformer.register_forward_hook(after_call, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for site in sites:
                site.override = None
        if cfg_weight > 1 and seen["conditional"] and not seen["unconditional"]:
            raise RuntimeError(
                f"CrossFrameGuidance: the pipeline ran no unconditional branch although its CFG weight was taken as "
                f"{cfg_weight}; the guidance was applied as s / w (eps_c - eps_ptb) instead of s (eps_c - eps_ptb)")


# -------------------------------------------------------------------- helpers
def _ranges(layers: list[int]) -> str:
    return f"{layers[0]}..{layers[-1]}" if layers and layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


def _rows(value: Any, rows: slice, batch: int) -> Any:
    """A transformer argument restricted to the conditional ``rows``: tensors whose first
    dimension is the call's batch are sliced, anything else (rotary tables, sizes, dicts) kept."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[rows]
    return value


def _sample(output: Any) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, torch.Tensor):
        return output
    raise TypeError(f"CrossFrameGuidance cannot read the transformer's output of type {type(output).__name__}")


def _with_sample(output: Any, sample: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (sample, *output[1:])
    if isinstance(output, torch.Tensor):
        return sample
    output.sample = sample
    return output


@contextmanager
def _announcing(transformer: torch.nn.Module, name: str) -> Iterator[None]:
    """Announce ``name`` to the transformer's stateful hooks for one call (so diffusers' caches
    and vidinterp's branch listener keep the perturbed call apart), then restore the pipeline's
    own announcement (``cache_context`` alone would clear it)."""
    from diffusers.hooks.hooks import StateManager

    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None or not hasattr(transformer, "cache_context"):
        yield
        return
    managers = [attribute for child in (registry, *registry._get_child_registries())
                for hook in child.hooks.values() for attribute in vars(hook).values()
                if isinstance(attribute, StateManager)]
    previous = [manager._context for manager in managers]
    try:
        with transformer.cache_context(name):
            yield
    finally:
        for manager, context in zip(managers, previous):
            manager.set_context(context)


def cfg_weight(adapter: "Adapter", guidance: float, negative_prompt: str | None, pipeline_kwargs: dict[str, Any],
               mode: str) -> float:
    """The CFG weight ``w`` of the pipeline call a trace makes (``1.0`` when it runs no
    unconditional branch): ``guidance_scale`` for families whose CFG argument it is (when
    ``> 1``); for guidance-distilled families the true-CFG argument their adapter names
    (``Adapter.unconditional_branch``, e.g. ``true_cfg_scale``), which runs only with a negative
    prompt and only when generating (the renoising denoisers run no true CFG)."""
    (argument,) = adapter.unconditional_branch(guidance)
    if argument == "guidance_scale":
        weight = guidance
    elif mode != "generation":
        weight = 1.0
    else:
        parameter = inspect.signature(adapter.pipe.__call__).parameters.get(argument)
        default = 1.0 if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
        weight = float(pipeline_kwargs.get(argument, default) or 1.0)
        if negative_prompt is None and pipeline_kwargs.get("negative_prompt_embeds") is None:
            weight = 1.0
    return float(weight) if weight > 1 else 1.0


def check_interventions(interventions: Any, pipeline_kwargs: dict[str, Any] | None = None) -> list[Intervention]:
    """``interventions``: ``None`` or an iterable of :class:`Intervention` instances, at most one
    :class:`CrossFrameGuidance`."""
    if interventions is None:
        return []
    if isinstance(interventions, Intervention) or isinstance(interventions, (str, bytes)) \
            or not isinstance(interventions, Iterable):
        raise TypeError(f"interventions must be a list of Intervention instances (e.g. "
                        f"[CrossFrameGuidance(scale=1.0)]), got {interventions!r}")
    checked = list(interventions)
    for item in checked:
        if not isinstance(item, Intervention):
            raise TypeError(f"interventions must hold Intervention instances, got {item!r} "
                            f"({type(item).__name__})")
    if sum(isinstance(item, CrossFrameGuidance) for item in checked) > 1:
        raise ValueError("interventions may hold one CrossFrameGuidance; combine the layers in one")
    if checked and (pipeline_kwargs or {}).get("use_dynamic_cfg"):
        raise ValueError("CrossFrameGuidance needs a constant CFG weight; use_dynamic_cfg=True changes it every step")
    return checked
