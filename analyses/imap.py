"""IMAP: GramCol restricted to motion heads (IMAP paper, eqs. 9-10).

In every selected layer and step, keep the top-k heads by separation score (default Calinski-
Harabasz, k = 5) and average their GramCol maps over heads, layers and steps. IMAP *is* GramCol
with a head selector and a layer selector; the paper's ablations are one expression each::

    GramCol()                                               # all layers, all heads
    GramCol(layers=Lambda2Layers(0.7))                      # + layer selection
    GramCol(heads=TopKHeads("chi", k=5))                    # + head selection
    IMAP()                                                  # both
    IMAP(heads=RandomHeads(k=5, seed=0))                    # random heads control
    IMAP(concept_softmax="final")                           # with softmax
"""

from __future__ import annotations

import xarray as xr

from vidinterp.analyses.gramcol import GramCol, HeadReduction, Normalization
from vidinterp.kernels.heads import HeadSelector, TopKHeads
from vidinterp.kernels.surrogate import SurrogateSelector
from vidinterp.maps import ConceptSoftmax
from vidinterp.registry import register_analysis
from vidinterp.selectors import LayerSelector

__all__ = ["IMAP"]


@register_analysis
class IMAP(GramCol):
    """IMAP map ``(concept, frame, y, x)``: GramCol over the top-``k`` heads by ``score``.

    Args:
        k: heads kept per (layer, step) (paper default 5; reference uses 3 for Wan2.1-1.3B);
            sites with fewer heads keep all of them.
        score: separation score ranking the heads.
        heads: overrides ``k``/``score`` with any head selector.
        layers: layer selector (default: lambda2-selected layers where a calibration or a
            reference list for the model is known, else all layers).
    """

    name = "imap"
    default = True
    min_frames = 2  # motion heads separate frames

    def __init__(
        self,
        *,
        k: int = 5,
        score: str = "chi",
        heads: HeadSelector | None = None,
        layers: LayerSelector | None = None,
        surrogate: SurrogateSelector | None = None,
        normalize: Normalization = "none",
        head_reduction: HeadReduction = "mean",
        concept_softmax: ConceptSoftmax = "none",
        steps=None,
    ) -> None:
        super().__init__(
            heads=heads or TopKHeads(score, k=k, at_most_heads=True),
            layers=layers or default_layer_selector(),
            surrogate=surrogate,
            normalize=normalize,
            head_reduction=head_reduction,
            concept_softmax=concept_softmax,
            steps=steps,
        )

    def result(self) -> xr.Dataset:
        """GramCol's result; when head selection kept every head at every visit (``k`` at least
        the heads of the sites, as on small models), the map's ``note`` attribute says that it
        equals GramCol over the same layers, so identical maps are not a surprise."""
        dataset = super().result()
        kept = dataset[f"{self.name}_selected_heads"]
        if bool(kept.all()):
            dataset[self.name].attrs["note"] = (
                f"head selection {self.heads!r} kept all {kept.sizes['head']} heads at every visited step and layer, "
                f"so this map equals GramCol over the same layers"
            )
        return dataset


def default_layer_selector() -> LayerSelector:
    from vidinterp.analyses.lambda2 import Lambda2Layers

    return Lambda2Layers(fallback="all")
