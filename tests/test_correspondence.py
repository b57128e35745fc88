"""Temporal correspondence (DiffTrack): the kernels against a dense numpy oracle, the analysis on a
random visit, ground truth from flow, and the planted tracking model's exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidinterp.context import TraceContext
from vidinterp.correspondence import (
    attention_mass,
    best_layer_step,
    block_budget,
    flow_from_shapes,
    frame_pair_correspondence,
    harmonic_mean,
    matching_accuracy,
    temperature_scale,
    truth_from_flow,
)
from vidinterp.registry import analysis_classes
from vidinterp.testing import random_visit


# -------------------------------------------------------------------- dense numpy oracle
def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def dense_correspondence(q_ref, k_ref, q_other, k_other, tau):
    """``C = (mean_{b,h} softmax_j(q_r k_k^T / tau) + (mean_{b,h} softmax_i(q_k k_r^T / tau))^T) / 2``."""
    forward = softmax(np.einsum("bhid,bhjd->bhij", q_ref, k_other) / tau, -1).mean(axis=(0, 1))
    backward = softmax(np.einsum("bhjd,bhid->bhji", q_other, k_ref) / tau, -1).mean(axis=(0, 1))
    return (forward + backward.T) / 2


def correspondence_class():
    return analysis_classes()["correspondence"]


@pytest.mark.parametrize("max_block", [1, 17, 60, 10**6])
def test_frame_pair_matches_dense_oracle_at_any_block_size(max_block):
    generator = torch.Generator().manual_seed(0)
    q_ref, k_ref, q_other, k_other = (torch.randn(2, 3, 7, 5, generator=generator) * 2 for _ in range(4))
    expected = dense_correspondence(*(t.double().numpy() for t in (q_ref, k_ref, q_other, k_other)), math.sqrt(5))
    match, confidence = frame_pair_correspondence(q_ref, k_ref, q_other, k_other, scale=5**-0.5, max_block=max_block)
    assert match.dtype == torch.int64 and confidence.dtype == torch.float32
    np.testing.assert_array_equal(match.numpy(), expected.argmax(axis=1))
    np.testing.assert_allclose(confidence.numpy(), expected.max(axis=1), rtol=1e-5)


def test_frame_pair_is_float32_for_bfloat16_inputs():
    generator = torch.Generator().manual_seed(1)
    tensors = [torch.randn(1, 2, 6, 4, generator=generator).bfloat16() for _ in range(4)]
    expected = dense_correspondence(*(t.double().numpy() for t in tensors), 2.0)
    match, confidence = frame_pair_correspondence(*tensors, scale=0.5, max_block=10)
    assert confidence.dtype == torch.float32
    np.testing.assert_allclose(confidence.numpy(), expected.max(axis=1), rtol=1e-5)


def test_attention_mass_matches_dense_softmax_with_masked_keys():
    generator = torch.Generator().manual_seed(2)
    query, keys = torch.randn(2, 3, 5, 4, generator=generator), torch.randn(2, 3, 11, 4, generator=generator)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = False
    groups = [slice(0, 3), slice(3, 7), slice(7, 11)]
    scores = np.einsum("bhid,bhjd->bhij", query.double().numpy(), keys.double().numpy()) * 0.5
    scores = np.where(mask.numpy()[:, None, None, :], scores, -np.inf)
    attention = softmax(scores, -1)
    expected = [attention[..., group].sum(-1).mean() for group in groups]
    for max_block in (1, 13, 10**6):
        mass = attention_mass(query, keys, groups, scale=0.5, key_mask=mask, max_block=max_block)
        np.testing.assert_allclose(mass.numpy(), expected, rtol=1e-5)


def test_temperature_and_budget():
    assert temperature_scale("sqrt_head_dim", 64, 48) == pytest.approx(1 / 8)
    assert temperature_scale("sqrt_heads", 64, 49) == pytest.approx(1 / 7)
    assert temperature_scale(2.0, 64, 48) == 0.5
    for bad in ("sqrt_d", 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            temperature_scale(bad, 64, 48)
    assert block_budget(1152) == 1152 * 1152 // 8 and block_budget(10**6) == 1 << 26 and block_budget(5, 3) == 3


# -------------------------------------------------------------------- the analysis on a random visit
def observed(analysis, *visits):
    analysis.bind(TraceContext(concepts=[], num_layers=4, num_inference_steps=8, timesteps=[float(t) for t in range(8)]))
    for visit in visits:
        analysis.observe(visit)
    return analysis.result()


@pytest.mark.parametrize("temperature", ["sqrt_head_dim", "sqrt_heads", 0.7])
@pytest.mark.parametrize("reference", [0, 2])
def test_analysis_matches_dense_oracle(temperature, reference):
    visit = random_visit(batch=3, analysed_rows=slice(1, 3), heads=3, head_dim=4, frames=3, height=3, width=4,
                         prompt_tokens=5, seed=3, layer=2, step=5)
    result = observed(correspondence_class()(reference=reference, temperature=temperature, max_block=40), visit)
    layout = visit.layout
    n = layout.tokens_per_frame
    q = visit.get("q", "visual").double().numpy().reshape(2, 3, 3, n, 4)
    k = visit.get("k", "visual").double().numpy().reshape(2, 3, 3, n, 4)
    tau = {"sqrt_head_dim": 2.0, "sqrt_heads": math.sqrt(3), 0.7: 0.7}[temperature]
    match_y = result["correspondence_match_y"].sel(layer=2, step=5).values
    match_x = result["correspondence_match_x"].sel(layer=2, step=5).values
    confidence = result["correspondence_confidence"].sel(layer=2, step=5).values
    for frame in range(3):
        if frame == reference:
            np.testing.assert_array_equal(match_y[frame].ravel(), np.arange(n) // 4)
            np.testing.assert_array_equal(match_x[frame].ravel(), np.arange(n) % 4)
            assert (confidence[frame] == 1).all()
            continue
        dense = dense_correspondence(q[:, :, reference], k[:, :, reference], q[:, :, frame], k[:, :, frame], tau)
        np.testing.assert_array_equal(match_y[frame].ravel() * 4 + match_x[frame].ravel(), dense.argmax(axis=1))
        np.testing.assert_allclose(confidence[frame].ravel(), dense.max(axis=1), rtol=1e-5)
    # mass: the reference queries' softmax over the whole joint sequence (prompt first), at 1/sqrt(d)
    everything = visit.get("k", "all").double().numpy()
    attention = softmax(np.einsum("bhid,bhjd->bhij", q[:, :, reference], everything) / 2.0, -1)
    expected = [attention[..., 5 + f * n:5 + (f + 1) * n].sum(-1).mean() for f in range(3)]
    np.testing.assert_allclose(result["correspondence_frame_mass"].sel(layer=2, step=5).values, expected, rtol=1e-5)
    others = [f for f in range(3) if f != reference]
    assert result["correspondence_cross_frame_mass"].sel(layer=2, step=5) == pytest.approx(sum(expected[f] for f in others), rel=1e-5)
    assert result["correspondence_mean_confidence"].sel(layer=2, step=5) == pytest.approx(confidence[others].mean(), rel=1e-6)
    assert list(result["correspondence_frame_mass"].dims) == ["layer", "step", "frame"]
    assert result["correspondence_match_y"].attrs["group"] == "diagnostics"
    assert set(result.coords) >= {"y_pixel", "x_pixel", "pixel_frame_first", "pixel_frame_last", "timestep"}


def test_analysis_syncs_nothing_to_the_host_while_updating(monkeypatch):
    analysis = correspondence_class()()
    analysis.bind(TraceContext(concepts=[], num_layers=1, num_inference_steps=1))
    visit = random_visit(frames=3, height=2, width=3)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation during update")

    with monkeypatch.context() as patch:
        for method in ("item", "cpu", "numpy", "tolist"):
            patch.setattr(torch.Tensor, method, forbidden)
        analysis.observe(visit)
    assert analysis.result()["correspondence_match_y"].sizes["frame"] == 3


def test_merge_joins_steps_and_refuses_a_repeated_step():
    visits = [random_visit(frames=2, height=2, width=2, step=step, seed=step) for step in (1, 2)]
    whole = observed(correspondence_class()(), *visits)
    first, second = correspondence_class()(), correspondence_class()()
    observed(first, visits[0])
    observed(second, visits[1])
    merged = first.merge(second).result()
    for name, variable in whole.data_vars.items():
        np.testing.assert_allclose(merged[name].values, variable.values, rtol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="cannot be merged"):
        first.merge(second)


def test_accuracy_truth_flow_and_scores():
    match = np.zeros((1, 2, 2, 2), dtype=np.int64)  # [F, h, w, (y, x)]: every cell matched to (0, 0)
    truth = np.array([[[[0, 0], [0, 1]], [[1, 1], [np.nan, np.nan]]]])
    np.testing.assert_allclose(matching_accuracy(match, truth, radius=0), [1 / 3])
    np.testing.assert_allclose(matching_accuracy(match, truth, radius=1), [2 / 3])
    np.testing.assert_allclose(matching_accuracy(match, truth, radius=1.5), [1.0])
    assert np.isnan(matching_accuracy(match, np.full_like(truth, np.nan)))[0]

    # a flow shifting everything by one cell right and down in pixel frame 4; one unknown centre
    flow = np.zeros((5, 16, 24, 2))
    flow[4] = (8.0, 8.0)
    valid = np.ones((5, 16, 24), dtype=bool)
    valid[4, 4, 12] = False  # the centre pixel of cell (0, 1)
    truth = truth_from_flow(flow, (2, 2, 3), (8, 8), pixel_frames=[0, 4], valid=valid)
    np.testing.assert_array_equal(truth[0, ..., 0], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(truth[0, ..., 1], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(truth[1, 0, 0], [1, 1])
    assert np.isnan(truth[1, 0, 1]).all() and np.isnan(truth[1, 0, 2]).all() and np.isnan(truth[1, 1]).all()

    assert harmonic_mean(np.array([1.0, 0.0, np.nan]), np.array([0.25, 0.5, 1.0])).tolist()[:2] == [0.4, 0.0]
    import xarray as xr
    score = xr.DataArray([[0.1, 0.9], [0.5, np.nan]], dims=("layer", "step"), coords={"layer": [3, 7], "step": [10, 20]})
    assert best_layer_step(score) == (3, 20)


def test_flow_from_shapes_moves_objects_and_keeps_the_background():
    from vidinterp.datasets.shapes import ShapeObject, render_clip

    clip = render_clip([ShapeObject("square", "red", 6, (5.5, 5.5), direction="right", speed=2.0),
                        ShapeObject("square", "blue", 4, (20.5, 10.5))], 4, 16, 24)
    flow, valid = flow_from_shapes(clip)
    red = clip.masks[0, 0]
    for t in range(4):
        assert (flow[t][red] == (2.0 * t, 0.0)).all() and valid[t][red].all()
    assert (flow[3][clip.masks[1, 0]] == 0).all() and valid[3][clip.masks[1, 0]].all()
    covered = clip.masks[0, 3] & ~red  # background that the red square covers at frame 3
    assert covered.any() and not valid[3][covered].any()


# -------------------------------------------------------------------- planted: the known answer
@pytest.fixture(scope="module")
def planted():
    from vidinterp.testing.tracking_planted import tracking_clip, tracking_pipeline

    pipe = tracking_pipeline()
    return pipe, tracking_clip(pipe.vidinterp_tracking)


def test_planted_correspondence_is_exact_and_ranks_the_planted_layer_first(planted):
    import vidinterp

    pipe, clip = planted
    design = pipe.vidinterp_tracking
    analysis = correspondence_class()(truth=clip.truth, radius=0)
    trace = vidinterp.trace(pipe, video=clip.frames, concepts=["red"], analyses=[analysis],
                            num_inference_steps=design.num_inference_steps, renoise_step=design.step)
    accuracy = trace.layers["correspondence_accuracy"].sel(step=design.step)
    assert accuracy.sel(layer=design.correspondence_layer) == 1.0
    assert accuracy.sel(layer=design.positional_layer) < 1.0 and accuracy.sel(layer=design.uniform_layer) < 0.1
    assert best_layer_step(trace.layers["correspondence_score"]) == (design.correspondence_layer, design.step)
    # every patch cell's match is its displaced cell, in every frame
    match_y = trace.diagnostics["correspondence_match_y"].sel(layer=design.correspondence_layer, step=design.step)
    match_x = trace.diagnostics["correspondence_match_x"].sel(layer=design.correspondence_layer, step=design.step)
    for row, column in clip.cells:
        np.testing.assert_array_equal(match_y.values[:, row, column], clip.truth[:, row, column, 0])
        np.testing.assert_array_equal(match_x.values[:, row, column], clip.truth[:, row, column, 1])
