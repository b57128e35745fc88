"""Method names of an evaluation -> fresh analysis instances (one set per traced clip).

A method is a registered analysis name (``vidinterp.analysis_classes()``: ``cross_attention``,
``concept_attention``, ``gramcol``, ``imap``, ...) or one of the IMAP paper's Table 2 ablation
rows, named as ``benchmarks/shapes.py`` names its variants (built through the analysis registry,
as the core reaches analyses):

* ``gramcol_all_layers``: ``GramCol(layers=AllLayers())``;
* ``gramcol+layer_sel``: GramCol with IMAP's default layer selector,
  ``Lambda2Layers(fallback="all")``: the lambda2-selected layers (the model's calibration or
  reference list; all layers when it has neither);
* ``gramcol+head_sel``: ``GramCol(layers=AllLayers(), heads=TopKHeads("chi", k=5))``;
* ``imap``: both (the registered class);
* with a head count ``k`` in the name, as :mod:`vidinterp.ablations` names the rows:
  ``imap(top{k}_chi)`` (IMAP with ``k`` heads), ``imap_all_layers(top{k}_chi)`` (head selection
  over all layers) and ``imap(random{k})`` (IMAP's layers with ``k`` random heads, seed 0: the
  control).

Any of them with the suffix ``+softmax`` runs with ``concept_softmax="final"``. The map
variable a method writes in ``trace.maps`` is named after the method.
"""

from __future__ import annotations

import inspect
import re
from typing import Callable

from vidinterp.analysis import Analysis

__all__ = ["VARIANTS", "K_VARIANTS", "SOFTMAX_SUFFIX", "method_analyses", "check_methods"]

SOFTMAX_SUFFIX = "+softmax"


def _gramcol(**options) -> Analysis:
    from vidinterp.registry import analysis_classes

    return analysis_classes()["gramcol"](**options)


def _gramcol_all_layers(softmax: str) -> Analysis:
    from vidinterp.selectors import AllLayers

    return _gramcol(layers=AllLayers(), concept_softmax=softmax)


def _gramcol_layer_selection(softmax: str) -> Analysis:
    from vidinterp.registry import analysis_classes

    return _gramcol(layers=analysis_classes()["imap"]().layers, concept_softmax=softmax)


def _gramcol_head_selection(softmax: str) -> Analysis:
    from vidinterp.kernels.heads import TopKHeads
    from vidinterp.selectors import AllLayers

    return _gramcol(layers=AllLayers(), heads=TopKHeads("chi", k=5, at_most_heads=True), concept_softmax=softmax)


#: The ablation variants beyond the registered analyses: name -> builder(concept_softmax).
VARIANTS: dict[str, Callable[[str], Analysis]] = {
    "gramcol_all_layers": _gramcol_all_layers,
    "gramcol+layer_sel": _gramcol_layer_selection,
    "gramcol+head_sel": _gramcol_head_selection,
}


def _imap_top(k: int, softmax: str) -> Analysis:
    from vidinterp.registry import analysis_classes

    return analysis_classes()["imap"](k=k, concept_softmax=softmax)


def _imap_all_layers_top(k: int, softmax: str) -> Analysis:
    from vidinterp.kernels.heads import TopKHeads
    from vidinterp.selectors import AllLayers

    return _gramcol(layers=AllLayers(), heads=TopKHeads("chi", k=k, at_most_heads=True), concept_softmax=softmax)


def _imap_random(k: int, softmax: str) -> Analysis:
    from vidinterp.kernels.heads import RandomHeads
    from vidinterp.registry import analysis_classes

    return analysis_classes()["imap"](heads=RandomHeads(k=k, seed=0), concept_softmax=softmax)


#: The rows with a head count in their name, as :mod:`vidinterp.ablations` names them:
#: pattern -> builder(k, concept_softmax).
K_VARIANTS: dict[re.Pattern, Callable[[int, str], Analysis]] = {
    re.compile(r"imap\(top(\d+)_chi\)"): _imap_top,
    re.compile(r"imap_all_layers\(top(\d+)_chi\)"): _imap_all_layers_top,
    re.compile(r"imap\(random(\d+)\)"): _imap_random,
}


def _builder(method: str) -> Callable[[str], Analysis] | None:
    from vidinterp.registry import analysis_classes

    base = method.removesuffix(SOFTMAX_SUFFIX)
    if base in VARIANTS:
        return VARIANTS[base]
    for pattern, build in K_VARIANTS.items():
        match = pattern.fullmatch(base)
        if match and int(match.group(1)) >= 1:
            return lambda softmax, k=int(match.group(1)), build=build: build(k, softmax)
    classes = analysis_classes()
    if base in classes and _is_map_method(classes[base]):
        return lambda softmax: classes[base](concept_softmax=softmax)
    return None


def _is_map_method(cls: type) -> bool:
    """A map analysis: one that takes ``concept_softmax`` (every :class:`~vidinterp.maps.MapAnalysis`)."""
    return "concept_softmax" in inspect.signature(cls.__init__).parameters


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` checked: non-empty, distinct, each a map method name (module docstring).

    Raises:
        ValueError: naming the unknown methods and the known ones.
    """
    from vidinterp.registry import analysis_classes

    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be a non-empty list of distinct names, got {methods}")
    unknown = [method for method in methods if _builder(method) is None]
    if unknown:
        known = sorted({*VARIANTS, *(name for name, cls in analysis_classes().items() if _is_map_method(cls))})
        raise ValueError(f"unknown map methods {unknown}; known: {known} and imap(top<k>_chi), "
                         f"imap_all_layers(top<k>_chi), imap(random<k>) (each also with the suffix {SOFTMAX_SUFFIX!r})")
    return methods


def method_analyses(methods: list[str]) -> list[Analysis]:
    """One fresh analysis per method, named after it (its map variable's name)."""
    analyses = []
    for method in check_methods(methods):
        analysis = _builder(method)("final" if method.endswith(SOFTMAX_SUFFIX) else "none")
        analysis.name = method
        analyses.append(analysis)
    return analyses
