"""The IMAP paper's Table 2 ablation rows as analyses, and their maps from one trace call.

Every row is a map method with its own name (the name of its ``Trace.maps`` variable):

======================================  ==============================================================
``cross_attention``                     cross attention, all layers
``concept_attention``                   ConceptAttention, all layers
``gramcol_all_layers``                  GramCol, all layers, all heads
``gramcol+layer_sel``                   GramCol on the selected layers (lambda2), all heads
``imap_all_layers(top{k}_chi)``         GramCol, all layers, the k heads of best CHI (head selection)
``imap(top{k}_chi)``                    IMAP: selected layers and the k heads of best CHI
``imap(random{k})``                     IMAP with k random heads (seeded) instead: the control
======================================  ==============================================================

each once per ``softmax`` choice: ``"none"`` as named, ``"final"`` (softmax over concepts of the
averaged map) with the suffix ``+softmax``. The core reaches the methods through the registry
(``cross_attention``, ``concept_attention``, ``gramcol``), so this module imports no analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import xarray as xr

from vidinterp.kernels.heads import RandomHeads, TopKHeads
from vidinterp.registry import analysis_classes
from vidinterp.selectors import AllLayers, LayerIndices

if TYPE_CHECKING:
    from vidinterp.analysis import Analysis

__all__ = ["SOFTMAX_SUFFIXES", "ablation_analyses", "ablation_maps", "calibrated_layers"]

#: ``concept_softmax`` of each row variant -> the suffix of its name
SOFTMAX_SUFFIXES = {"none": "", "final": "+softmax"}


def _named(analysis: "Analysis", name: str) -> "Analysis":
    analysis.name = name
    return analysis


def ablation_analyses(selected_layers: Sequence[int], heads: int, ks: Iterable[int] = (5,), seed: int = 0,
                      softmax: Iterable[str] = ("none", "final")) -> dict[str, "Analysis"]:
    """Fresh analyses of every ablation row (module docstring), by name, in table order: for
    each ``softmax`` choice the four rows without head selection, then per ``k`` the
    head-selection, IMAP and random-heads rows.

    Args:
        selected_layers: the layers of "+ layer selection" and IMAP (e.g. lambda2-selected).
        heads: heads per layer of the model; every ``k`` must be in ``1..heads``.
        ks: heads kept by head selection, IMAP and the random control.
        seed: seed of the random heads.
        softmax: ``concept_softmax`` choices, ``"none"`` and/or ``"final"``.

    Raises:
        ValueError: no selected layer, a ``k`` outside ``1..heads``, or an unknown softmax.
    """
    layers, ks, softmax = sorted({int(layer) for layer in selected_layers}), [int(k) for k in ks], list(softmax)
    if not layers:
        raise ValueError("selected_layers is empty: give the layers that '+ layer selection' and IMAP keep")
    wrong = [k for k in ks if not 1 <= k <= heads]
    if wrong or not ks:
        raise ValueError(f"ks must be head counts in 1..{heads} (the model's heads per layer), got {ks}")
    unknown = [choice for choice in softmax if choice not in SOFTMAX_SUFFIXES]
    if unknown or not softmax:
        raise ValueError(f"softmax choices must be some of {list(SOFTMAX_SUFFIXES)}, got {softmax}")
    methods = analysis_classes()
    cross, concept, gramcol = methods["cross_attention"], methods["concept_attention"], methods["gramcol"]
    rows: dict[str, Analysis] = {}
    for choice in softmax:
        suffix = SOFTMAX_SUFFIXES[choice]
        variants = [
            (f"cross_attention{suffix}", cross(concept_softmax=choice)),
            (f"concept_attention{suffix}", concept(concept_softmax=choice)),
            (f"gramcol_all_layers{suffix}", gramcol(layers=AllLayers(), concept_softmax=choice)),
            (f"gramcol+layer_sel{suffix}", gramcol(layers=LayerIndices(layers), concept_softmax=choice)),
        ]
        for k in ks:
            top = dict(heads=TopKHeads("chi", k=k, at_most_heads=True), concept_softmax=choice)
            variants += [
                (f"imap(top{k}_chi){suffix}", gramcol(layers=LayerIndices(layers), **top)),
                (f"imap_all_layers(top{k}_chi){suffix}", gramcol(layers=AllLayers(), **top)),
                (f"imap(random{k}){suffix}", gramcol(layers=LayerIndices(layers), heads=RandomHeads(k=k, seed=seed),
                                                      concept_softmax=choice)),
            ]
        rows.update((name, _named(analysis, name)) for name, analysis in variants)
    return rows


def calibrated_layers(pipe: Any) -> list[int]:
    """The layers a pipeline's lambda2 calibration selects (``pipe.vidinterp_calibration``:
    layer scores above its ``lambda2_threshold``), as IMAP selects them for the zoo models.

    Raises:
        ValueError: the pipeline carries no lambda2 scores with a threshold.
    """
    calibration = getattr(pipe, "vidinterp_calibration", None) or {}
    if "lambda2" not in calibration or "lambda2_threshold" not in calibration:
        raise ValueError("the pipeline carries no lambda2 layer scores with a threshold (pipe.vidinterp_calibration): "
                         "pass selected_layers=[...] (e.g. from vidinterp.analyses.lambda2.calibrate_layers)")
    threshold = float(calibration["lambda2_threshold"])
    return sorted(int(layer) for layer, score in calibration["lambda2"].items() if score > threshold)


def ablation_maps(model: Any, video: Any, prompt: str, concepts: Sequence[str], *,
                  selected_layers: Sequence[int] | None = None, ks: Iterable[int] = (5,), seed: int = 0,
                  softmax: Iterable[str] = ("none", "final"), **trace_options: Any) -> xr.Dataset:
    """Maps of every ablation row from ONE renoising trace of ``video``.

    Args:
        model: a pipeline (or what :func:`vidinterp.trace` loads).
        video, prompt, concepts, trace_options: as :func:`vidinterp.trace` takes them.
        selected_layers: layers of the layer-selection rows (default: the pipeline's lambda2
            calibration, :func:`calibrated_layers`).
        ks, seed, softmax: see :func:`ablation_analyses`.

    Returns:
        Dataset with ``maps`` ``(variant, concept, frame, y, x)`` float32 (the row names in table
        order; the dim is not named ``method``, which ``DataArray.sel`` takes as its fill-method
        argument) and the maps' coordinates; attrs: the trace's, ``selected_layers``, ``ks``,
        ``seed``; and ``video``, ``uint8 [pixel_frame, height, width, rgb]``, the video the
        maps belong to.
    """
    from vidinterp.inputs import load_pipeline
    from vidinterp.registry import adapter_for
    from vidinterp.trace import trace

    pipe = load_pipeline(model)
    layers = calibrated_layers(pipe) if selected_layers is None else list(selected_layers)
    heads = adapter_for(pipe).site_specs()[0].heads
    ks = [int(k) for k in ks]
    analyses = ablation_analyses(layers, heads, ks, seed, softmax)
    result = trace(pipe, video=video, prompt=prompt, concepts=list(concepts), analyses=list(analyses.values()),
                   **trace_options)
    maps = xr.concat([result.maps[name].drop_attrs() for name in analyses], dim="variant", coords="minimal",
                     compat="override", join="exact").assign_coords(variant=list(analyses))
    dataset = xr.Dataset({"maps": maps.astype(np.float32)})
    if result.video is not None:
        dataset["video"] = (("pixel_frame", "height", "width", "rgb"), result.video)
    dataset.attrs = {**result.attrs, "selected_layers": sorted(set(layers)), "ks": ks, "seed": int(seed)}
    return dataset
