"""The official IMAP code's conventions (``official_imap``), each against a brute-force numpy
oracle on small tensors: concept slots padded with zero embeddings (z-score and softmax over
every slot, maps for the named concepts only), the z-score across slots, sum over heads for
GramCol and mean over the selected heads for IMAP, the per-visit softmax, cross attention and
ConceptAttention sums, QK matching against prompt keys, the conditional CFG row, and the
reference layer lists and k."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import calinski_harabasz_score

import vidinterp
import vidinterp.testing
from vidinterp.analyses.concept_attention import ConceptAttention
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.gramcol import GramCol
from vidinterp.analyses.imap import IMAP
from vidinterp.analyses.official_imap import official_imap
from vidinterp.kernels.surrogate import QKPeak
from vidinterp.prompt_words import PromptWords
from vidinterp.selectors import AllLayers, LayerIndices
from vidinterp.testing import random_visit

from oracles import brute_gramcol, brute_qk_peaks, numpy_parts, run, softmax

NAMED, SLOTS, HEADS, FRAMES = ["dog", "grass"], 5, 4, 3  # two concepts and three padding slots


def padded_visits(count=2):
    """CFG-batched visits (row 1 conditional) whose concept tensors hold five slots."""
    return [random_visit(batch=2, heads=HEADS, frames=FRAMES, concepts=SLOTS, seed=seed, layer=seed,
                         analysed_rows=slice(1, 2)) for seed in range(count)]


def head_columns(visit, peaks=None):
    """``[H, slots, P]``: each head's Gram columns at its QK peaks (conditional row)."""
    q, o, k, _ = numpy_parts(visit)
    assert q.shape[0] == 1 and k.shape[2] == SLOTS  # only row 1, every slot
    peaks = brute_qk_peaks(q, k, FRAMES) if peaks is None else peaks
    return np.stack([brute_gramcol(o, peaks, FRAMES, [head]) for head in range(HEADS)])


def zscore_over_slots(columns):
    """Every (head, position) entry z-scored across the slot axis: unbiased std + 1e-6."""
    return (columns - columns.mean(axis=1, keepdims=True)) / (columns.std(axis=1, ddof=1, keepdims=True) + 1e-6)


def test_gramcol_zscores_every_slot_sums_heads_softmaxes_per_visit_and_returns_named_concepts():
    visits = padded_visits()
    result = run(GramCol(normalize="concept_zscore", head_reduction="sum", concept_softmax="per_visit"), visits,
                 concepts=NAMED, concept_slots=SLOTS)["gramcol"]
    assert list(result.concept.values) == NAMED
    expected = np.mean([softmax(zscore_over_slots(head_columns(visit)).sum(axis=0)) for visit in visits], axis=0)
    np.testing.assert_allclose(result.values.reshape(2, -1), expected[:2], rtol=1e-5, atol=1e-5)


def test_imap_takes_the_mean_over_the_top_k_heads_after_the_zscore():
    visits = padded_visits()
    result = run(IMAP(k=2, normalize="concept_zscore", head_reduction="mean", layers=AllLayers()), visits,
                 concepts=NAMED, concept_slots=SLOTS)["imap"]
    expected = []
    for visit in visits:
        outputs = numpy_parts(visit)[1][0]  # [H, P, d]
        labels = np.repeat(np.arange(FRAMES), outputs.shape[1] // FRAMES)
        top = np.argsort([calinski_harabasz_score(outputs[head], labels) for head in range(HEADS)])[::-1][:2]
        expected.append(zscore_over_slots(head_columns(visit))[top].mean(axis=0))
    np.testing.assert_allclose(result.values.reshape(2, -1), np.mean(expected, axis=0)[:2], rtol=1e-5, atol=1e-5)


def test_cross_attention_and_concept_attention_sums_with_the_softmax_over_every_slot():
    visits = padded_visits()
    cross = run(CrossAttention(concept_softmax="per_visit"), visits, concepts=NAMED, concept_slots=SLOTS)
    concept = run(ConceptAttention(concept_softmax="per_visit"), visits, concepts=NAMED, concept_slots=SLOTS)
    cross_expected, concept_expected = [], []
    for visit in visits:
        q, o, k, o_c = (part[0] for part in numpy_parts(visit))  # [H, n, d], conditional row
        cross_expected.append(softmax(np.einsum("hpd,hcd->cp", q, k) / HEADS))  # mean over heads, no 1/sqrt(d)
        concept_expected.append(softmax(np.einsum("hcd,hpd->cp", o_c, o)))  # sum over heads
    np.testing.assert_allclose(cross["cross_attention"].values.reshape(2, -1), np.mean(cross_expected, axis=0)[:2],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(concept["concept_attention"].values.reshape(2, -1),
                               np.mean(concept_expected, axis=0)[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["first", "mean"])
def test_qk_matching_against_prompt_keys_reads_each_word_and_padding_reads_its_slot(reduction):
    visit = padded_visits(1)[0]
    positions = [[4], [1, 2]]  # "dog" at prompt token 4, "grass" split over tokens 1 and 2
    weights = torch.zeros(2, 5)
    weights[0, 4] = 1.0
    weights[1, [1, 2] if reduction == "mean" else [1]] = 0.5 if reduction == "mean" else 1.0
    words = PromptWords(NAMED, "a grass dog", ["a", "grass", "dog"], positions, [["dog"], ["gr", "##ass"]],
                        reduction, weights)
    # the z-score across slots lets the padding slots' surrogates reach the named concepts' maps
    result = run(GramCol(surrogate=QKPeak(keys="prompt"), normalize="concept_zscore"), [visit], concepts=NAMED,
                 concept_slots=SLOTS, locate_prompt_words=lambda: words)["gramcol"]
    q = visit.get("q", "visual").double().numpy()
    prompt_keys = visit.get("k", "prompt").double().numpy()  # [1, H, T, d]
    grass = prompt_keys[:, :, [1, 2]].mean(axis=2) if reduction == "mean" else prompt_keys[:, :, 1]
    keys = np.stack([prompt_keys[:, :, 4], grass, prompt_keys[:, :, 2], prompt_keys[:, :, 3], prompt_keys[:, :, 4]],
                    axis=2)  # the words, then padding slots 2, 3, 4 read prompt slots 2, 3, 4
    peaks = brute_qk_peaks(q, keys, FRAMES)
    expected = zscore_over_slots(head_columns(visit, peaks)).mean(axis=0)
    np.testing.assert_allclose(result.values.reshape(2, -1), expected[:2], rtol=1e-5, atol=1e-5)


def test_one_concept_without_padding_is_refused_instead_of_nan():
    with pytest.raises(ValueError, match="needs at least 2 concept slots"):
        run(GramCol(normalize="concept_zscore"), [random_visit(concepts=1)], concepts=["dog"])
    result = run(GramCol(normalize="concept_zscore"), [random_visit(concepts=3)], concepts=["dog"], concept_slots=3)
    assert np.isfinite(result["gramcol"].values).all()


def test_padded_slots_run_through_the_concept_stream():
    """With ``concept_slots``, the stream carries zero-embedding rows after the concepts: the
    concepts' keys are unchanged in the first block, their attention outputs change there (they
    attend to the padding rows), and from the second block on their keys change too."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    seen = {}

    def recorder(slots):
        def record(name):
            def hook(module, args, output):
                seen[(slots, name)] = output.detach().clone()
            return hook
        return {f"blocks.{layer}.attn.{hook}": record(f"{layer}.{hook}")
                for layer in (0, 1) for hook in ("hook_concept_k", "hook_concept_z")}

    for slots in (None, "text_length"):
        vidinterp.trace(pipe, video=video, prompt="a dog on grass", concepts=NAMED, num_inference_steps=4,
                        analyses=[CrossAttention()], hooks=recorder(slots), concept_slots=slots)
    plain, padded = (lambda name: seen[(None, name)]), (lambda name: seen[("text_length", name)])
    assert plain("0.hook_concept_k").shape[2] == 2 and padded("0.hook_concept_k").shape[2] == 16  # text length 16
    torch.testing.assert_close(padded("0.hook_concept_k")[:, :, :2], plain("0.hook_concept_k"))
    assert not torch.allclose(padded("0.hook_concept_z")[:, :, :2], plain("0.hook_concept_z"))
    assert not torch.allclose(padded("1.hook_concept_k")[:, :, :2], plain("1.hook_concept_k"))


def test_preset_configures_every_convention_for_cogvideox():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    preset = official_imap(pipe, qk_keys="prompt")
    assert preset["concept_slots"] == "text_length"
    names = {analysis.name: analysis for analysis in preset["analyses"]}
    assert list(names) == ["cross_attention", "concept_attention", "gramcol", "imap"]
    assert all(analysis.concept_softmax == "per_visit" for analysis in names.values())
    assert (names["gramcol"].normalize, names["gramcol"].head_reduction) == ("concept_zscore", "sum")
    assert (names["imap"].normalize, names["imap"].head_reduction, names["imap"].heads.k) == ("concept_zscore", "mean", 5)
    assert names["imap"].surrogate.keys == "prompt" and isinstance(names["imap"].layers, AllLayers)
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    trace = vidinterp.trace(pipe, video=video, prompt="a dog on grass", concepts=["dog"], num_inference_steps=4,
                            **preset)
    assert trace.attrs["concept_slots"] == 16 and list(trace.maps.concept.values) == ["dog"]
    assert all(np.isfinite(variable.values).all() for variable in trace.maps.data_vars.values())


def test_preset_uses_the_reference_layers_and_k_of_a_known_checkpoint():
    pipe = vidinterp.testing.tiny_pipeline("wan", num_layers=20)
    pipe.transformer.register_to_config(_name_or_path="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    preset = official_imap(pipe)
    names = {analysis.name: analysis for analysis in preset["analyses"]}
    assert "concept_attention" not in names and preset["concept_slots"] is None  # no concept stream
    assert names["imap"].heads.k == 3
    assert all(isinstance(analysis.layers, LayerIndices) and analysis.layers.layers == list(range(5, 20))
               for analysis in names.values())


def test_a_model_without_concept_stream_cannot_pad_concepts():
    pipe = vidinterp.testing.tiny_pipeline("wan")
    with pytest.raises(ValueError, match="no concept stream"):
        vidinterp.trace(pipe, prompt="a dog on grass", concepts=["dog"], num_inference_steps=2,
                        concept_slots="text_length")
