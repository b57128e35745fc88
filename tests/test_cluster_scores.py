"""Separation scores (vidinterp.kernels.cluster_scores) against scikit-learn / numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score  # noqa: E402

from vidinterp.kernels.cluster_scores import (  # noqa: E402
    HIGHER_IS_BETTER,
    SEPARATION_SCORES,
    calinski_harabasz,
    davies_bouldin,
    fisher_ratio,
    higher_is_better,
    separation_score,
    silhouette,
    silhouette_sample_indices,
)

RTOL = 1e-5

# (batch, heads, frames, tokens_per_frame, head_dim)
SHAPES = [(1, 1, 2, 2, 1), (2, 3, 4, 5, 8), (1, 2, 13, 7, 16), (2, 2, 3, 40, 4)]
# spread of the frame centres relative to unit within-frame noise: 0 = fully overlapping
SEPARATIONS = [0.0, 0.3, 5.0]


def make_outputs(shape, separation, *, seed=0, offset=0.0):
    """float64 numpy [B,H,F,T,d]: frame centres ~ N(0, separation^2) + offset, unit noise,
    a different scale per head."""
    B, H, F, T, d = shape
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(B, H, F, 1, d)) * separation + offset
    scale = rng.uniform(0.5, 2.0, size=(B, H, 1, 1, 1))
    return (centres + rng.normal(size=(B, H, F, T, d))) * scale


def slices(x):
    """Yield (b, h, X [F*T, d], labels [F*T]) for every (batch, head)."""
    B, H, F, T, d = x.shape
    labels = np.repeat(np.arange(F), T)
    for b in range(B):
        for h in range(H):
            yield b, h, x[b, h].reshape(F * T, d), labels


def fisher_bruteforce(X, labels):
    mu = X.mean(axis=0)
    d = X.shape[1]
    S_b = np.zeros((d, d))
    S_w = np.zeros((d, d))
    for k in np.unique(labels):
        Xk = X[labels == k]
        mk = Xk.mean(axis=0)
        S_b += len(Xk) * np.outer(mk - mu, mk - mu)
        S_w += (Xk - mk).T @ (Xk - mk)
    return np.trace(S_b) / np.trace(S_w)


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chi_db_fisher_match_oracles(shape, separation, dtype):
    x = make_outputs(shape, separation, seed=hash((shape, separation)) % 2**32)
    xt = torch.tensor(x, dtype=dtype)
    xn = xt.double().numpy()  # the values actually scored
    chi, db, fisher = calinski_harabasz(xt), davies_bouldin(xt), fisher_ratio(xt)
    for out in (chi, db, fisher):
        assert out.shape == shape[:2] and out.dtype == torch.float32
    for b, h, X, labels in slices(xn):
        np.testing.assert_allclose(chi[b, h].item(), calinski_harabasz_score(X, labels), rtol=RTOL)
        np.testing.assert_allclose(db[b, h].item(), davies_bouldin_score(X, labels), rtol=RTOL)
        np.testing.assert_allclose(fisher[b, h].item(), fisher_bruteforce(X, labels), rtol=RTOL)


def test_large_common_offset_float32():
    # Attention outputs can share a large mean component; centring keeps float32 accurate.
    x = make_outputs((1, 2, 4, 30, 8), 0.3, seed=7, offset=1e3)
    xt = torch.tensor(x, dtype=torch.float32)
    xn = xt.double().numpy()
    chi, db = calinski_harabasz(xt), davies_bouldin(xt)
    for b, h, X, labels in slices(xn):
        ref = calinski_harabasz_score(X, labels)
        np.testing.assert_allclose(chi[b, h].item(), ref, rtol=RTOL)
        np.testing.assert_allclose(db[b, h].item(), davies_bouldin_score(X, labels), rtol=RTOL)


def test_fisher_is_rescaled_chi():
    shape = (2, 3, 5, 6, 4)
    xt = torch.tensor(make_outputs(shape, 0.5, seed=3))
    F, T = shape[2], shape[3]
    N = F * T
    torch.testing.assert_close(fisher_ratio(xt), calinski_harabasz(xt) * (F - 1) / (N - F), rtol=1e-6, atol=0)


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_silhouette_matches_sklearn_same_subsample(shape, separation, dtype):
    B, H, F, T, d = shape
    N = F * T
    x = make_outputs(shape, separation, seed=11)
    xt = torch.tensor(x, dtype=dtype)
    xn = xt.double().numpy()
    sample_size = max(3, (2 * N) // 3)
    seed = 5
    # an int seed draws exactly the subsample sklearn draws for random_state=seed
    sil = silhouette(xt, sample_size=sample_size, generator_or_seed=seed, chunk_size=16)
    assert sil.shape == (B, H) and sil.dtype == torch.float32
    idx = silhouette_sample_indices(N, sample_size, seed).numpy()
    assert len(idx) == min(sample_size, N) and len(np.unique(idx)) == len(idx)
    for b, h, X, labels in slices(xn):
        if len(np.unique(labels[idx])) < 2:
            continue
        ref_sampled = silhouette_score(X, labels, sample_size=sample_size, random_state=seed)
        ref_indexed = silhouette_score(X[idx], labels[idx])
        np.testing.assert_allclose(ref_sampled, ref_indexed, rtol=1e-12)
        np.testing.assert_allclose(sil[b, h].item(), ref_indexed, rtol=RTOL, atol=1e-7)


def test_silhouette_full_explicit_indices_generator_and_chunking():
    shape = (2, 2, 5, 12, 6)
    F, T = shape[2], shape[3]
    N = F * T
    xt = torch.tensor(make_outputs(shape, 0.7, seed=2))
    xn = xt.numpy()
    full = silhouette(xt, sample_size=None)
    for b, h, X, labels in slices(xn):
        np.testing.assert_allclose(full[b, h].item(), silhouette_score(X, labels), rtol=RTOL, atol=1e-7)
    # chunk size does not change the result
    torch.testing.assert_close(silhouette(xt, sample_size=None, chunk_size=1), full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(silhouette(xt, sample_size=None, chunk_size=10_000), full, rtol=1e-6, atol=1e-7)
    # torch.Generator: same subsample as silhouette_sample_indices with an equally seeded generator
    idx = silhouette_sample_indices(N, 25, torch.Generator().manual_seed(9))
    via_gen = silhouette(xt, sample_size=25, generator_or_seed=torch.Generator().manual_seed(9))
    via_idx = silhouette(xt, sample_indices=idx)
    torch.testing.assert_close(via_gen, via_idx)
    for b, h, X, labels in slices(xn):
        i = idx.numpy()
        np.testing.assert_allclose(via_idx[b, h].item(), silhouette_score(X[i], labels[i]), rtol=RTOL, atol=1e-7)


def test_silhouette_singletons_absent_frames_and_repeats():
    shape = (1, 2, 4, 6, 3)
    T = shape[3]
    xt = torch.tensor(make_outputs(shape, 1.0, seed=4))
    xn = xt.numpy()
    # frame 0: one point (silhouette 0), frame 1: absent, frames 2/3: several; one repeated index
    idx = np.array([0, 2 * T, 2 * T + 1, 2 * T + 3, 3 * T, 3 * T + 2, 3 * T + 5, 3 * T + 5])
    for given in (idx, torch.from_numpy(idx), idx.tolist()):
        sil = silhouette(xt, sample_indices=given)
        for b, h, X, labels in slices(xn):
            np.testing.assert_allclose(sil[b, h].item(), silhouette_score(X[idx], labels[idx]), rtol=RTOL, atol=1e-7)


def test_silhouette_subsample_errors():
    xt = torch.randn(1, 1, 3, 4, 2)
    with pytest.raises(ValueError, match="distinct frames"):
        silhouette(xt, sample_indices=[0, 1, 2])  # all in frame 0
    with pytest.raises(ValueError, match="distinct frames"):
        silhouette(xt, sample_indices=[0, 4])  # 2 frames, 2 points
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        silhouette(xt, sample_indices=[0, 12])
    with pytest.raises(ValueError, match="1-D integer"):
        silhouette(xt, sample_indices=np.array([0.0, 5.0, 9.0]))
    with pytest.raises(ValueError, match="sample_size"):
        silhouette(xt, sample_size=0)
    with pytest.raises(TypeError, match="generator_or_seed"):
        silhouette(xt, generator_or_seed="seed")


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_input_returns_float32(low):
    shape = (2, 2, 3, 20, 8)
    xl = torch.tensor(make_outputs(shape, 0.5, seed=8)).to(low)
    xd = xl.double()  # exact values of the low-precision tensor
    for name, fn in SEPARATION_SCORES.items():
        kw = {"sample_size": 40} if name == "silhouette" else {}
        got = fn(xl, **kw)
        assert got.dtype == torch.float32 and got.shape == shape[:2], name
        torch.testing.assert_close(got, fn(xd, **kw), rtol=1e-5, atol=1e-6, msg=name)


def test_degenerate_cases_follow_sklearn():
    # every frame collapsed to one point: CHI = 1.0 and DB = 0.0 in scikit-learn
    centres = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    x = centres[None, None, :, None, :].expand(1, 1, 3, 4, 2).contiguous()
    X = x[0, 0].reshape(12, 2).numpy()
    labels = np.repeat(np.arange(3), 4)
    assert calinski_harabasz(x).item() == calinski_harabasz_score(X, labels) == 1.0
    assert davies_bouldin(x).item() == davies_bouldin_score(X, labels) == 0.0
    assert fisher_ratio(x).item() == float("inf")
    # two frames with identical centroids: their pair is ignored in the max, like sklearn
    pts = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    frames = np.stack([pts, 2.0 * pts, pts + 10.0])  # frames 0 and 1: both centred exactly at 0
    xt = torch.tensor(frames)[None, None]
    X = frames.reshape(12, 2)
    np.testing.assert_allclose(davies_bouldin(xt).item(), davies_bouldin_score(X, labels), rtol=RTOL)


@pytest.mark.parametrize("fn", [calinski_harabasz, davies_bouldin, fisher_ratio, silhouette])
def test_input_validation(fn):
    with pytest.raises(ValueError, match="5 dims"):
        fn(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="frames=1"):
        fn(torch.randn(1, 2, 1, 5, 3))
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.ones(1, 1, 2, 3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(np.zeros((1, 1, 2, 3, 2)))
    with pytest.raises(ValueError, match="compute_dtype"):
        fn(torch.randn(1, 1, 2, 3, 2), compute_dtype=torch.bfloat16)
    if fn is not silhouette:  # silhouette checks the subsample instead
        with pytest.raises(ValueError, match="tokens_per_frame=1"):
            fn(torch.randn(1, 2, 3, 1, 4))


def test_registry():
    assert set(SEPARATION_SCORES) == {"chi", "davies_bouldin", "silhouette", "fisher"}
    assert set(HIGHER_IS_BETTER) == set(SEPARATION_SCORES) and higher_is_better is HIGHER_IS_BETTER
    assert HIGHER_IS_BETTER["davies_bouldin"] is False
    assert all(HIGHER_IS_BETTER[k] for k in ("chi", "silhouette", "fisher"))
    xt = torch.tensor(make_outputs((1, 2, 3, 4, 2), 1.0))
    torch.testing.assert_close(separation_score(xt), calinski_harabasz(xt))
    torch.testing.assert_close(separation_score(xt, "silhouette", sample_size=None), silhouette(xt, sample_size=None))
    with pytest.raises(ValueError, match="unknown score 'chii'"):
        separation_score(xt, "chii")


def test_higher_is_better_orientation():
    # a head with well-separated frames beats one with overlapping frames under every score
    B, H, F, T, d = 1, 2, 4, 10, 3
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(B, H, F, T, d))
    centres = rng.normal(size=(1, 1, F, 1, d))
    sep = np.array([0.1, 10.0])[None, :, None, None, None]
    xt = torch.tensor(noise + centres * sep)
    for name, fn in SEPARATION_SCORES.items():
        s = fn(xt)[0]
        better = s[1] > s[0] if HIGHER_IS_BETTER[name] else s[1] < s[0]
        assert bool(better), (name, s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    xt = torch.tensor(make_outputs((2, 3, 4, 16, 8), 0.5, seed=1), dtype=torch.float32)
    for name, fn in SEPARATION_SCORES.items():
        got = fn(xt.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), fn(xt), rtol=1e-5, atol=1e-6, msg=name)
