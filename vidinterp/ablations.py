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
averaged map) with the suffix ``+softmax``. :func:`table2_sweeps` and :func:`sweep_maps` give the
same rows as comparison-view panels that each sweep one setting (softmax, layer subset, ``k``,
denoising step) along a dim, all from one trace. The core reaches the methods through the registry
(``cross_attention``, ``concept_attention``, ``gramcol``), so this module imports no analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import xarray as xr

from vidinterp.kernels.heads import RandomHeads, TopKHeads
from vidinterp.registry import analysis_classes
from vidinterp.selectors import AllLayers, LayerIndices

if TYPE_CHECKING:
    from vidinterp.analysis import Analysis

__all__ = ["SOFTMAX_SUFFIXES", "ablation_analyses", "ablation_maps", "calibrated_layers", "Sweep", "table2_sweeps",
           "sweep_maps"]

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


class Sweep(NamedTuple):
    """Maps of several panels from one trace, each swept along its own dim (:func:`sweep_maps`).

    Attributes:
        maps: ``{panel title: DataArray (dim, concept, frame, y, x)}`` with the maps' coordinates;
            ``plot_comparison(sweep.maps, sweep.video)`` gives each panel a dropdown over its dim.
        video: ``uint8 [pixel_frames, height, width, 3]`` the maps belong to, or ``None``.
        trace: the one :class:`~vidinterp.Trace` they come from.
    """

    maps: dict[str, xr.DataArray]
    video: np.ndarray | None
    trace: Any


def table2_sweeps(selected_layers: Sequence[int], heads: int, *, ks: Iterable[int] | None = None,
                  layer_subsets: Mapping[str, Sequence[int]] | None = None, steps: Iterable[int] = (),
                  k: int | None = None, seed: int = 0) -> dict[str, tuple[str, dict[Any, "Analysis"]]]:
    """The Table 2 rows as panels with the settings one sweeps as their dim (for :func:`sweep_maps`):

    * ``"cross attention"``, ``"ConceptAttention"``: dim ``softmax`` (``"none"``, ``"final"``);
    * ``"GramCol"``: dim ``layers``, the ``layer_subsets`` (default ``"all"`` and ``"selected"``);
    * ``"IMAP"``, ``"IMAP, random heads"``: dim ``k`` over ``ks`` (default ``1..heads``): the
      selected layers with the top-``k`` heads by CHI, or ``k`` random heads (``seed``);
    * ``"IMAP by step"`` when ``steps`` are given: dim ``step``, IMAP (top-``k`` heads, default the
      largest of ``ks`` below ``heads``) restricted to each analysed schedule index.

    Raises:
        ValueError: no selected layer, or a ``k`` outside ``1..heads``.
    """
    from vidinterp.selectors import StepIndices

    layers = sorted({int(layer) for layer in selected_layers})
    if not layers:
        raise ValueError("selected_layers is empty: give the layers that layer selection and IMAP keep")
    ks = list(range(1, heads + 1)) if ks is None else [int(value) for value in ks]
    if not ks or any(not 1 <= value <= heads for value in ks):
        raise ValueError(f"ks must be head counts in 1..{heads} (the model's heads per layer), got {ks}")
    subsets = {"all": None, "selected": layers} if layer_subsets is None else dict(layer_subsets)
    methods = analysis_classes()
    cross, concept, gramcol = methods["cross_attention"], methods["concept_attention"], methods["gramcol"]

    def layer_selector(subset: Sequence[int] | None):
        return AllLayers() if subset is None else LayerIndices(subset)

    panels: dict[str, tuple[str, dict[Any, Analysis]]] = {
        "cross attention": ("softmax", {choice: cross(concept_softmax=choice) for choice in SOFTMAX_SUFFIXES}),
        "ConceptAttention": ("softmax", {choice: concept(concept_softmax=choice) for choice in SOFTMAX_SUFFIXES}),
        "GramCol": ("layers", {label: gramcol(layers=layer_selector(subset)) for label, subset in subsets.items()}),
        "IMAP": ("k", {value: gramcol(layers=LayerIndices(layers), heads=TopKHeads("chi", k=value)) for value in ks}),
        "IMAP, random heads": ("k", {value: gramcol(layers=LayerIndices(layers), heads=RandomHeads(k=value, seed=seed))
                                     for value in ks}),
    }
    steps = [int(step) for step in steps]
    if steps:
        chosen = k if k is not None else max([value for value in ks if value < heads] or ks)
        panels["IMAP by step"] = ("step", {step: gramcol(layers=LayerIndices(layers), steps=StepIndices([step]),
                                                         heads=TopKHeads("chi", k=chosen)) for step in steps})
    return panels


def sweep_maps(model: Any, video: Any, prompt: str, concepts: Sequence[str],
               panels: Mapping[str, tuple[str, Mapping[Any, "Analysis"]]], **trace_options: Any) -> Sweep:
    """Every analysis of every panel from ONE :func:`vidinterp.trace` call, each panel's maps
    stacked along its dim.

    Args:
        model, video, prompt, concepts, trace_options: as :func:`vidinterp.trace` takes them.
        panels: ``{title: (dim, {value: map analysis})}``, e.g. :func:`table2_sweeps`; each
            analysis is renamed (``"<title> · <dim>=<value>"``) so their names are distinct.

    Raises:
        ValueError: an empty panel, or a dim named ``method`` (``DataArray.sel(method=...)`` is
            xarray's fill-method argument) or like a map dim.
    """
    from vidinterp.plotting.overlays import MAP_DIMS
    from vidinterp.trace import trace

    named: dict[str, tuple[str, Any, Analysis]] = {}
    for title, (dim, analyses) in panels.items():
        if not analyses:
            raise ValueError(f"panel {title!r} sweeps no values of {dim!r}")
        if dim == "method" or dim in MAP_DIMS:
            raise ValueError(f"panel {title!r}: a sweep dim cannot be named {dim!r} (the map dims are {MAP_DIMS}, and "
                             f"DataArray.sel(method=...) is xarray's fill-method argument); use e.g. 'variant'")
        for value, analysis in analyses.items():
            named[f"{title} · {dim}={value}"] = (title, value, _named(analysis, f"{title} · {dim}={value}"))
    result = trace(model, video=video, prompt=prompt, concepts=list(concepts),
                   analyses=[analysis for _, _, analysis in named.values()], **trace_options)
    maps = {}
    for title, (dim, analyses) in panels.items():
        names = [name for name, (panel, _, _) in named.items() if panel == title]
        maps[title] = xr.concat([result.maps[name].drop_attrs() for name in names], dim=dim, coords="minimal",
                                compat="override", join="exact").assign_coords({dim: list(analyses)})
    return Sweep(maps, result.video, result)
