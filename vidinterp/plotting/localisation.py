"""Per-head localisation against ground truth: the y axis of
:func:`~vidinterp.plotting.plot_head_scatter`.

A head's own map is GramCol restricted to that one (layer, head) (``benchmarks/shapes.py``'s
"CHI vs motion IoU")::

    analyses = head_map_analyses(range(num_layers), range(num_heads))   # GramCol per head
    trace = vidinterp.trace(pipe, video=clip, prompt=..., concepts=..., analyses=analyses + [Separation()])
    located = head_localisation(stack_head_maps(trace.maps), masks)     # (layer, head) IoU
    trace.plot_head_scatter(located)
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import xarray as xr

from vidinterp.metrics import binarize_at_mean, iou
from vidinterp.pixels import pixel_maps

__all__ = ["HEAD_MAP_PREFIX", "head_map_analyses", "stack_head_maps", "head_localisation"]

#: Map variables ``head_<layer>_<head>`` hold one head's map.
HEAD_MAP_PREFIX = "head_"


def head_map_analyses(layers: Iterable[int], heads: Iterable[int], prefix: str = HEAD_MAP_PREFIX) -> list:
    """One :class:`~vidinterp.analyses.gramcol.GramCol` per (layer, head), restricted to it and
    named ``f"{prefix}{layer}_{head}"`` (its map variable in ``Trace.maps``)."""
    from vidinterp.registry import analysis_classes
    from vidinterp.kernels.heads import HeadIndices
    from vidinterp.selectors import LayerIndices

    analyses = []
    heads = list(heads)
    for layer in layers:
        for head in heads:
            analysis = analysis_classes()["gramcol"](layers=LayerIndices([int(layer)]), heads=HeadIndices([int(head)]))
            analysis.name = f"{prefix}{int(layer)}_{int(head)}"
            analyses.append(analysis)
    return analyses


def stack_head_maps(maps: xr.Dataset, prefix: str = HEAD_MAP_PREFIX) -> xr.DataArray:
    """The per-head map variables ``f"{prefix}{layer}_{head}"`` of ``maps`` as one DataArray
    ``(layer, head, concept, frame, y, x)`` (NaN for (layer, head) pairs without a map), with
    the maps' coordinates.

    Raises:
        ValueError: ``maps`` has no variable named that way.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)_(\d+)$")
    found = {tuple(int(g) for g in match.groups()): name for name in maps.data_vars
             if (match := pattern.match(str(name)))}
    if not found:
        raise ValueError(f"no per-head maps named {prefix}<layer>_<head> among {list(maps.data_vars)}; "
                         f"trace with vidinterp.plotting.head_map_analyses(layers, heads)")
    layers = sorted({layer for layer, _ in found})
    heads = sorted({head for _, head in found})
    template = maps[next(iter(found.values()))]
    values = np.full((len(layers), len(heads), *template.shape), np.nan, dtype=np.float64)
    for (layer, head), name in found.items():
        values[layers.index(layer), heads.index(head)] = maps[name].transpose(*template.dims).values
    return xr.DataArray(values, dims=("layer", "head", *template.dims),
                        coords={**template.coords, "layer": layers, "head": heads}, name="head_maps")


def head_localisation(head_maps: xr.DataArray, masks: np.ndarray | xr.DataArray) -> xr.DataArray:
    """How well each head's own map localises: per (layer, head), the mean IoU, over every
    (concept, pixel frame) whose ground-truth mask is not empty, of the map at pixel resolution
    (:func:`vidinterp.pixels.pixel_maps`: nearest cell, latent-frame spans) thresholded at its
    per-frame mean after min-max normalisation (:func:`vidinterp.metrics.binarize_at_mean`)
    against the mask.

    Args:
        head_maps: ``(layer, head, concept, frame, y, x)`` with a trace's coordinates
            (:func:`stack_head_maps`).
        masks: ``bool [concept, pixel_frames, height, width]``, one mask per concept of
            ``head_maps`` in its order (e.g. ``clip.concept_mask(word)`` of a shapes clip).

    Returns:
        ``(layer, head)`` float64 DataArray named ``"localisation_iou"``; NaN for a head without a
        map or when no mask is non-empty.

    Raises:
        ValueError: wrong dims, or masks that do not match the concepts or the pixel geometry.
    """
    expected = ("layer", "head", "concept", "frame", "y", "x")
    if tuple(head_maps.dims) != expected:
        raise ValueError(f"head_maps must have dims {expected}, got {tuple(head_maps.dims)}")
    masks = np.asarray(masks, dtype=bool)
    concepts = head_maps.sizes["concept"]
    if masks.ndim != 4 or masks.shape[0] != concepts:
        raise ValueError(f"masks must be bool [concept={concepts}, pixel_frames, height, width], "
                         f"got shape {list(masks.shape)}")
    scores = np.full((head_maps.sizes["layer"], head_maps.sizes["head"]), np.nan)
    counted = [(c, f) for c in range(concepts) for f in range(masks.shape[1]) if masks[c, f].any()]
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            one = head_maps.isel(layer=i, head=j, drop=True)
            if not counted or np.isnan(one.values).all():
                continue
            pixels = pixel_maps(one, masks.shape[1]).values
            if pixels.shape[2:] != masks.shape[2:]:
                raise ValueError(f"masks are {masks.shape[2]}x{masks.shape[3]} pixels, the maps cover "
                                 f"{pixels.shape[2]}x{pixels.shape[3]}")
            scores[i, j] = np.mean([iou(binarize_at_mean(pixels[c, f]), masks[c, f]) for c, f in counted])
    return xr.DataArray(scores, dims=("layer", "head"),
                        coords={"layer": head_maps.layer.values, "head": head_maps["head"].values},
                        name="localisation_iou")
