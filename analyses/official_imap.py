"""The official IMAP code's conventions as one preset, for comparison with published numbers.

vidinterp's defaults are the IMAP paper's method. The public reference implementation differs
in ways that change the numbers; :func:`official_imap` returns the trace options that reproduce
what it computes (on its CogVideoX path)::

    trace = vidinterp.trace(pipe, video="clip.mp4", concepts=["dog", "walking"], **official_imap(pipe))

Conventions (each covered by a brute-force test):

* **Concept slots.** The concept embeddings are zero-padded to the model's text length and every
  slot runs through the concept stream, so real concepts also attend to the padding rows (their
  maps change from the second block on); z-scores and softmaxes run over every slot, and maps
  are returned for the named concepts only (``concept_slots="text_length"``). Families without a
  concept stream (Wan) have no slots to pad.
* **Cross attention**: mean over heads of ``q_x . k_c``, no ``1/sqrt(d)``; **ConceptAttention**:
  sum over heads of ``o_c . o_x`` (vidinterp's own definitions).
* **GramCol and IMAP.** The Gram column per (head, concept slot, frame) at the QK-peak surrogate
  token, z-scored across the concept-slot axis (mean and unbiased std over all slots, + 1e-6);
  the official ``imap`` (GramCol over all heads, here the ``gramcol`` map) then *sums* over heads,
  the official ``sel_imap`` (IMAP, here the ``imap`` map) takes the *mean* over the top-k heads
  by Calinski-Harabasz score.
* **QK matching** against the concept keys (``qk_keys="concept"``, default) or against the prompt
  keys (``"prompt"``: a concept reads the key of its word in the prompt).
* **Softmax** (``softmax=True``) over the concept-slot axis, padding included, at every (layer,
  step) visit, before averaging over layers and steps.
* **Branch**: the conditional CFG branch (vidinterp's default for every analysis).
* **Layers and k**: the model's reference layer list and k (:mod:`vidinterp.model_cards`;
  Wan2.1-1.3B keeps 3 heads); other models use every layer and k = 5.

One concept without padding gives NaN in the official code (the std of one value); here the
z-score refuses it with a clear error.
"""

from __future__ import annotations

from typing import Any, Literal

from vidinterp.analyses.concept_attention import ConceptAttention
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.gramcol import GramCol
from vidinterp.analyses.imap import IMAP
from vidinterp.inputs import load_pipeline
from vidinterp.kernels.surrogate import QKPeak
from vidinterp.model_cards import model_card
from vidinterp.registry import adapter_for
from vidinterp.selectors import AllLayers, LayerIndices, LayerSelector

__all__ = ["official_imap"]

#: IMAP's motion heads per (layer, step) when the model has no reference card.
DEFAULT_K = 5


def official_imap(model: Any, *, qk_keys: Literal["concept", "prompt"] = "concept", softmax: bool = True) -> dict[str, Any]:
    """Trace options reproducing the official IMAP code (see the module docstring).

    Args:
        model: the pipeline (or local path / cached id) the trace will run.
        qk_keys: QK-matching target: the concept stream's keys or the prompt keys of the
            concepts' words.
        softmax: apply the per-visit softmax over concept slots to every map.

    Returns:
        ``{"analyses": [...], "concept_slots": ...}`` for :func:`vidinterp.trace`.
    """
    adapter = adapter_for(load_pipeline(model))
    card = model_card(adapter.model_name)
    k = card.imap_k if card is not None else DEFAULT_K
    concept_softmax = "per_visit" if softmax else "none"

    def layers() -> LayerSelector:
        return LayerIndices(card.layers) if card is not None else AllLayers()

    kinds = {spec.kind for spec in adapter.site_specs()}
    analyses = [CrossAttention(concept_softmax=concept_softmax, layers=layers())]
    if kinds & set(ConceptAttention.site_kinds):
        analyses.append(ConceptAttention(concept_softmax=concept_softmax, layers=layers()))
    analyses += [
        GramCol(normalize="concept_zscore", head_reduction="sum", surrogate=QKPeak(keys=qk_keys),
                concept_softmax=concept_softmax, layers=layers()),
        IMAP(k=k, normalize="concept_zscore", head_reduction="mean", surrogate=QKPeak(keys=qk_keys),
             concept_softmax=concept_softmax, layers=layers()),
    ]
    return {"analyses": analyses, "concept_slots": "text_length" if adapter.has_concept_stream else None}
