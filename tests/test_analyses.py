"""Every analysis against an independent brute-force oracle on small tensors, plus the paper's
ablation rows as one-line expressions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

import vidinterp
import vidinterp.testing
from vidinterp.analyses.concept_attention import ConceptAttention
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.gramcol import GramCol
from vidinterp.analyses.imap import IMAP
from vidinterp.analyses.lambda2 import Lambda2Layers
from vidinterp.analyses.prompt_mass import PromptMass
from vidinterp.analyses.qk_matching import QKMatching
from vidinterp.analyses.separation import Separation
from vidinterp.analysis import Analysis
from vidinterp.context import TraceContext
from vidinterp.kernels.heads import AllHeads, HeadIndices, RandomHeads, TopKHeads
from vidinterp.kernels.surrogate import HiNorm, QKPeak
from vidinterp.selectors import LayerIndices
from vidinterp.testing import random_visit

from oracles import brute_gramcol, brute_qk_peaks, numpy_parts, run

CONCEPTS = ["dog", "walking", "grass"]


def test_cross_attention_matches_formula():
    visits = [random_visit(batch=2, seed=s, layer=s, concepts=3) for s in range(3)]
    result = run(CrossAttention(), visits)["cross_attention"].values
    expected = np.mean([np.einsum("bhpd,bhcd->cp", *[numpy_parts(v)[i] for i in (0, 2)]) / 6 for v in visits], axis=0)
    np.testing.assert_allclose(result.reshape(3, -1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("softmax", ["per_visit", "final"])
def test_concept_softmax_order(softmax):
    visits = [random_visit(seed=s, layer=s, concepts=3) for s in range(2)]
    result = run(ConceptAttention(concept_softmax=softmax), visits)["concept_attention"].values.reshape(3, -1)
    raw = [np.einsum("bhcd,bhpd->cp", numpy_parts(v)[3], numpy_parts(v)[1]) for v in visits]
    soft = lambda m: np.exp(m - m.max(0)) / np.exp(m - m.max(0)).sum(0)
    expected = np.mean([soft(m) for m in raw], axis=0) if softmax == "per_visit" else soft(np.mean(raw, axis=0))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.sum(axis=0), 1.0, rtol=1e-5)


def test_concept_attention_matches_formula():
    visits = [random_visit(batch=1, seed=s, layer=s, concepts=3) for s in range(2)]
    result = run(ConceptAttention(), visits)["concept_attention"].values.reshape(3, -1)
    expected = np.mean([np.einsum("bhcd,bhpd->cp", numpy_parts(v)[3], numpy_parts(v)[1]) for v in visits], axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_qk_peak_and_hinorm_positions():
    visit = random_visit(batch=2, heads=3, frames=3, height=4, width=5, concepts=3, seed=4)
    q, o, k, _ = numpy_parts(visit)
    np.testing.assert_array_equal(QKPeak().positions(visit).numpy(), brute_qk_peaks(q, k, 3))
    video = QKPeak(per="video").positions(visit).numpy()
    scores = np.einsum("bhpd,bhcd->bhcp", q, k)
    np.testing.assert_array_equal(video[..., 0], scores.argmax(-1))
    assert (video == video[..., :1]).all()
    norms = np.linalg.norm(o, axis=-1).reshape(2, 3, 3, 20)
    expected = norms.argmax(-1) + np.arange(3) * 20
    np.testing.assert_array_equal(HiNorm().positions(visit).numpy(), np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("normalize", ["none", "concept_zscore"])
@pytest.mark.parametrize("head_reduction", ["mean", "sum"])
def test_gramcol_matches_full_gram_matrix(normalize, head_reduction):
    visits = [random_visit(batch=2, heads=3, seed=s, layer=s, concepts=3) for s in range(2)]
    gramcol = GramCol(normalize=normalize, head_reduction=head_reduction)
    result = run(gramcol, visits)["gramcol"].values.reshape(3, -1)
    expected = []
    for visit in visits:
        q, o, k, _ = numpy_parts(visit)
        expected.append(brute_gramcol(o, brute_qk_peaks(q, k, 3), 3, range(3), zscore=normalize == "concept_zscore",
                                      head_reduction=head_reduction))
    np.testing.assert_allclose(result, np.mean(expected, axis=0), rtol=1e-5, atol=1e-4)


def test_concept_zscore_needs_two_concepts():
    with pytest.raises(ValueError, match="needs at least 2 concept slots"):
        run(GramCol(normalize="concept_zscore"), [random_visit(concepts=1)], concepts=["dog"])


def test_imap_is_gramcol_over_top_chi_heads():
    visits = [random_visit(batch=1, heads=6, frames=4, seed=s, layer=s, concepts=3) for s in range(3)]
    result = run(IMAP(k=2, layers=LayerIndices([0, 2])), visits)
    expected = []
    for visit in visits[0], visits[2]:
        q, o, k, _ = numpy_parts(visit)
        labels = np.repeat(np.arange(4), 20)
        chi = [calinski_harabasz_score(o[0, h], labels) for h in range(6)]
        top = np.argsort(chi)[::-1][:2]
        expected.append(brute_gramcol(o, brute_qk_peaks(q, k, 4), 4, top))
    np.testing.assert_allclose(result["imap"].values.reshape(3, -1), np.mean(expected, axis=0), rtol=1e-5, atol=1e-4)
    selected = result["imap_selected_heads"]
    assert list(selected.layer.values) == [0, 2] and (selected.sum("head") == 2).all()


def test_imap_says_when_head_selection_kept_every_head():
    """k >= heads keeps them all: the map then equals GramCol, and its note says so."""
    visits = [random_visit(batch=1, heads=4, frames=3, seed=s, layer=s, concepts=3) for s in range(2)]
    all_heads = run(IMAP(k=5), visits)
    np.testing.assert_allclose(all_heads["imap"].values, run(GramCol(), visits)["gramcol"].values, rtol=1e-6)
    assert "kept all 4 heads" in all_heads["imap"].attrs["note"] and "equals GramCol" in all_heads["imap"].attrs["note"]
    assert "note" not in run(IMAP(k=2), visits)["imap"].attrs


def test_head_selectors():
    visit = random_visit(heads=6, frames=4, seed=1)
    _, o, _, _ = numpy_parts(visit)
    labels = np.repeat(np.arange(4), 20)
    db = [davies_bouldin_score(o[0, h], labels) for h in range(6)]
    assert set(TopKHeads("davies_bouldin", k=2).select(visit).nonzero().squeeze(1).tolist()) == set(np.argsort(db)[:2])
    assert AllHeads().select(visit).all()
    assert HeadIndices([1, 4]).select(visit).nonzero().squeeze(1).tolist() == [1, 4]
    first = RandomHeads(k=3, seed=7).select(visit)
    assert first.sum() == 3 and torch.equal(first, RandomHeads(k=3, seed=7).select(visit))
    with pytest.raises(ValueError, match=r"k must be in 1\.\.6"):
        TopKHeads(k=7).select(visit)
    with pytest.raises(ValueError, match="heads \\[9\\] do not exist"):
        HeadIndices([9]).select(visit)
    with pytest.raises(ValueError, match="unknown separation score"):
        TopKHeads("gap")


def test_separation_scores_match_sklearn():
    visit = random_visit(batch=1, heads=3, frames=4, height=5, width=6, seed=2)
    result = run(Separation(silhouette_sample_size=50, seed=3), [visit])
    _, o, _, _ = numpy_parts(visit)
    labels = np.repeat(np.arange(4), 30)
    for h in range(3):
        point = dict(step=0, layer=0, head=h)
        np.testing.assert_allclose(result["separation_chi"].sel(point), calinski_harabasz_score(o[0, h], labels), rtol=1e-5)
        np.testing.assert_allclose(result["separation_davies_bouldin"].sel(point), davies_bouldin_score(o[0, h], labels), rtol=1e-5)
        np.testing.assert_allclose(result["separation_silhouette"].sel(point),
                                   silhouette_score(o[0, h], labels, sample_size=50, random_state=3), rtol=1e-5)


def test_qk_matching_positions_in_grid_units():
    visit = random_visit(batch=1, heads=2, frames=3, height=4, width=5, concepts=3, seed=5)
    result = run(QKMatching(keep_maps=True), [visit])
    q, _, k, _ = numpy_parts(visit)
    peaks = brute_qk_peaks(q, k, 3)[0]  # [H, C, F]
    local = peaks - np.arange(3) * 20
    np.testing.assert_array_equal(result.surrogate_y.sel(step=0, layer=0).values, (local // 5).transpose(1, 2, 0))
    np.testing.assert_array_equal(result.surrogate_x.sel(step=0, layer=0).values, (local % 5).transpose(1, 2, 0))
    assert result.qk_map.dims == ("concept", "layer", "head", "frame", "y", "x")


@pytest.mark.parametrize("score_block", [2**24, 2 * 22 * 5])  # one chunk; chunks of 5 query rows
def test_prompt_mass_matches_dense_softmax(monkeypatch, score_block):
    import vidinterp.analyses.prompt_mass as prompt_mass

    monkeypatch.setattr(prompt_mass, "SCORE_BLOCK_ELEMENTS", score_block)
    visit = random_visit(batch=1, heads=2, frames=2, height=3, width=3, prompt_tokens=4, seed=6)
    result = run(PromptMass(), [visit])["prompt_mass"].values  # [H, F, T]
    q = visit.tensors["q"][0].double().numpy()
    k = visit.tensors["k"][0].double().numpy()
    logits = np.einsum("hid,hjd->hij", q, k) / np.sqrt(q.shape[-1])
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    visual = attention[:, 4:, :4]  # visual queries -> prompt keys
    expected = visual.reshape(2, 2, 9, 4).mean(axis=2)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_prompt_mass_masks_padded_prompt_slots_of_the_analysed_rows():
    """Where the layout masks prompt slots (HunyuanVideo), no mass goes to them and the rest is
    renormalised as in the model's attention; the mask of the analysed (conditional) row applies."""
    visit = random_visit(batch=2, heads=2, frames=2, height=3, width=3, prompt_tokens=4, seed=6,
                         analysed_rows=slice(1, 2))
    real = torch.tensor([[True, False, False, False], [True, True, True, False]])
    visit = dataclasses.replace(visit, layout=dataclasses.replace(visit.layout, prompt_mask=real))
    result = run(PromptMass(), [visit])["prompt_mass"].values  # [H, F, T]
    q = visit.tensors["q"][1].double().numpy()
    k = visit.tensors["k"][1].double().numpy()
    logits = np.einsum("hid,hjd->hij", q, k) / np.sqrt(q.shape[-1])
    logits[:, :, 3] = -np.inf  # the padded prompt slot of row 1
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    expected = attention[:, 4:, :4].reshape(2, 2, 9, 4).mean(axis=2)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert (result[:, :, 3] == 0).all()


def test_prompt_mass_merges_runs_over_other_steps_and_the_same_step():
    visits = [random_visit(heads=2, frames=2, height=2, width=2, prompt_tokens=3, step=step, seed=seed)
              for step, seed in ((0, 1), (1, 2), (1, 3))]
    whole = run(PromptMass(), visits)["prompt_mass"]
    first, second = PromptMass(), PromptMass()
    run(first, visits[:2])
    run(second, visits[2:])
    xr.testing.assert_allclose(first.merge(second).result()["prompt_mass"], whole)


def test_unknown_group_fails_at_bind_naming_the_allowed_groups():
    class Extras(Analysis):
        name, group = "extras", "extra"

        def update(self, visit):
            pass

        def result(self):
            return xr.Dataset()

    with pytest.raises(ValueError, match=r"'extras' declares group 'extra'; expected one of \('maps', 'heads'"):
        Extras().bind(TraceContext(concepts=["a"], num_layers=1, num_inference_steps=1))


def test_paper_table2_rows_are_one_expression_each():
    """GramCol all layers; + layer selection; + head selection; both (IMAP); with softmax;
    random heads — all in one traced pass on a tiny CogVideoX."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", num_layers=3)
    layers = Lambda2Layers(scores={0: 0.9, 1: 0.5, 2: 0.8}, threshold=0.7)
    rows = {
        "gramcol_all_layers": GramCol(),
        "gramcol_layers": GramCol(layers=layers),
        "gramcol_heads": GramCol(heads=TopKHeads("chi", k=1)),
        "imap": IMAP(k=1, layers=Lambda2Layers(scores={0: 0.9, 1: 0.5, 2: 0.8}, threshold=0.7)),
        "imap_softmax": IMAP(k=1, concept_softmax="final"),
        "imap_random": IMAP(heads=RandomHeads(k=1, seed=0)),
    }
    for name, analysis in rows.items():
        analysis.name = name  # one trace, distinct variable names
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], analyses=list(rows.values()),
                            num_inference_steps=4)
    assert set(rows) <= set(trace.maps.data_vars)
    kept = trace.heads["gramcol_layers_selected_heads"].fillna(0).sum(("step", "head"))
    assert kept.sel(layer=1) == 0 and kept.sel(layer=0) > 0 and kept.sel(layer=2) > 0
    assert int(trace.heads["gramcol_heads_selected_heads"].sum("head").max()) == 1
    np.testing.assert_allclose(trace.maps["imap_softmax"].sum("concept").values, 1.0, rtol=1e-5)


def test_lambda2_layers_sources(tmp_path, monkeypatch):
    from vidinterp.analyses.lambda2 import load_layer_scores, save_layer_scores
    from vidinterp.model_cards import model_card

    context = TraceContext(concepts=["a"], num_layers=42, num_inference_steps=50, model="THUDM/CogVideoX-5b")
    selector = Lambda2Layers()
    monkeypatch.setenv("VIDINTERP_CACHE", str(tmp_path))
    selector.bind(context)
    assert [l for l in range(42) if selector.selects(l)] == list(model_card("THUDM/CogVideoX-5b").layers)
    path = save_layer_scores({0: 0.8, 1: 0.6, 2: 0.71}, "THUDM/CogVideoX-5b")
    assert load_layer_scores(path) == {0: 0.8, 1: 0.6, 2: 0.71}
    selector.bind(context)  # the stored calibration now wins over the reference list
    assert [l for l in range(42) if selector.selects(l)] == [0, 2]
    with pytest.raises(ValueError, match="no lambda2 layer scores for model 'tiny'"):
        Lambda2Layers().bind(TraceContext(concepts=["a"], num_layers=2, num_inference_steps=5, model="tiny"))


def test_a_pipeline_carries_its_layer_calibration_into_every_trace():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", num_layers=3)
    pipe.vidinterp_calibration = {"lambda2": {0: 0.9, 1: 0.5, 2: 0.8}}  # as zoo models ship theirs
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], analyses=[IMAP(k=1)],
                            num_inference_steps=4)
    kept = trace.heads["imap_selected_heads"].fillna(0).sum(("step", "head"))
    assert kept.where(kept > 0, drop=True).layer.values.tolist() == [0, 2]
    pipe.vidinterp_calibration["lambda2_threshold"] = 0.85  # the threshold the calibration was made for
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], analyses=[IMAP(k=1)],
                            num_inference_steps=4)
    kept = trace.heads["imap_selected_heads"].fillna(0).sum(("step", "head"))
    assert kept.where(kept > 0, drop=True).layer.values.tolist() == [0]
    del pipe.vidinterp_calibration  # no calibration: IMAP falls back to all layers
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], analyses=[IMAP(k=1)],
                            num_inference_steps=4)
    kept = trace.heads["imap_selected_heads"].fillna(0).sum(("step", "head"))
    assert kept.where(kept > 0, drop=True).layer.values.tolist() == [0, 1, 2]


def test_one_pass_returns_all_maps_and_diagnostics():
    from vidinterp.analyses.lambda2 import Lambda2

    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    trace = vidinterp.trace(pipe, prompt="a dog on grass", concepts=["dog", "grass"], num_inference_steps=3,
                            analyses=vidinterp.default_analyses() + [Lambda2()], steps=[2])
    assert {"imap", "gramcol", "concept_attention", "cross_attention"} <= set(trace.maps.data_vars)
    assert {"separation_chi", "separation_davies_bouldin", "separation_silhouette", "separation_fisher",
            "imap_selected_heads"} <= set(trace.heads.data_vars)
    assert {"lambda2", "lambda2_layer"} <= set(trace.layers.data_vars)
    assert {"surrogate_y", "surrogate_x"} <= set(trace.diagnostics.data_vars)
    assert len(calls) == 3  # one transformer call per step: every analysis shared the pass


def test_calibrate_layers_stores_scores_the_selector_reads(tmp_path):
    from vidinterp.analyses.lambda2 import calibrate_layers, load_layer_scores

    pipe = vidinterp.testing.tiny_pipeline("cogvideox", num_layers=3)
    path = tmp_path / "scores.json"
    scores = calibrate_layers(pipe, ["a dog on grass", "a red car"], num_inference_steps=3, steps=[2], path=path)
    assert set(scores) == {0, 1, 2} and all(0 <= value <= 1 for value in scores.values())
    assert load_layer_scores(path) == pytest.approx(scores)
    threshold = sorted(scores.values())[1]
    selector = Lambda2Layers(threshold, scores=path)
    selector.bind(TraceContext(concepts=["a"], num_layers=3, num_inference_steps=3))
    assert [layer for layer in range(3) if selector.selects(layer)] == [l for l, s in scores.items() if s > threshold]
