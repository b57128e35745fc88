"""The site graph of a pipeline for free-form use: list its sites, or install them for torch
hooks and nnsight."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np
import xarray as xr

from vidinterp.adapter import ConceptReduction
from vidinterp.arguments import hooked_arguments
from vidinterp.concept_stream import concept_state
from vidinterp.inputs import load_pipeline
from vidinterp.install import installed
from vidinterp.layout import TokenLayout
from vidinterp.registry import adapter_for
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteGraph

__all__ = ["hooked", "list_sites"]


@contextmanager
def hooked(model: Any, concepts: Iterable[str] | None = None, *, prompt: str | None = None,
           concept_reduction: ConceptReduction = "first") -> Iterator[SiteGraph]:
    """Install the site graph on a pipeline's transformer for free-form use (torch hooks,
    nnsight) and yield the :class:`~vidinterp.sites.SiteGraph`. With ``concepts`` the concept
    stream runs in every call of the conditional branch (as the pipeline announces it,
    :mod:`vidinterp.branches`). The model is restored on exit, also on error. The arguments are
    checked before anything is installed (:func:`vidinterp.arguments.hooked_arguments`)."""
    pipe, adapter, names = hooked_arguments(model, concepts, prompt, concept_reduction)
    state = None
    if names is not None:
        state = concept_state(adapter, adapter.encode_concepts(names, concept_reduction), prompt)
    with installed(adapter, Runtime(concepts=state)) as graph:
        yield graph


def list_sites(model: Any, num_frames: int | None = None, height: int | None = None,
               width: int | None = None, concepts: int = 1) -> xr.Dataset:
    """The sites of a model with the shape of every hook point for a video of the given pixel
    geometry (default: the model's native geometry), batch of one, no CFG.

    Returns a Dataset indexed by ``hook`` (``blocks.{l}.attn.hook_*``) with the variables
    ``shape`` (``[batch, heads, tokens, head_dim]``), ``module`` (path inside the transformer)
    and ``layer``.
    """
    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    default = adapter.default_geometry()
    geometry = (num_frames or default[0], height or default[1], width or default[2])
    layout = adapter.layout_for(*geometry)
    names, shapes, modules, layers = [], [], [], []
    for spec in adapter.site_specs():
        for hook in spec.hook_names:
            names.append(f"{spec.name}.{hook}")
            shapes.append([1, spec.heads, _hook_tokens(spec.kind, hook, layout, concepts), spec.head_dim])
            modules.append(f"{spec.module_path}.processor.{hook}")
            layers.append(spec.layer)
    return xr.Dataset(
        {
            "shape": (("hook", "axis"), np.array(shapes)),
            "module": ("hook", modules),
            "layer": ("hook", layers),
        },
        coords={"hook": names, "axis": ["batch", "heads", "tokens", "head_dim"]},
        attrs={"model": adapter.model_name, "family": adapter.family, "num_frames": geometry[0],
               "height": geometry[1], "width": geometry[2], "frames": layout.frames,
               "grid_height": layout.height, "grid_width": layout.width, "prompt_tokens": layout.prompt_tokens},
    )


def _hook_tokens(kind: str, hook: str, layout: TokenLayout, concepts: int) -> int:
    """Token count of a hook point's tensor for a site of ``kind``."""
    if "concept" in hook:
        return concepts
    if kind == "joint":
        return layout.visual_tokens + layout.prompt_tokens
    if kind == "cross" and hook in ("hook_k", "hook_v"):
        return layout.prompt_tokens
    return layout.visual_tokens

