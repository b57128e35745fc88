"""Tests for ``vidinterp.kernels.spectral`` against a float64 NumPy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from vidinterp.kernels import spectral
from vidinterp.kernels.spectral import Lambda2Estimate, second_eigenvalue_magnitude

ATOL = 1e-4


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=-1, keepdims=True)


def oracle_eigenvalues(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None
) -> list[list[np.ndarray]]:
    """Eigenvalues of each head's float64 softmax matrix over its valid tokens, by modulus."""
    q = query.double().numpy()
    k = key.double().numpy()
    scale = 1.0 / np.sqrt(q.shape[-1])
    out = []
    for b in range(q.shape[0]):
        keep = np.ones(q.shape[2], bool) if mask is None else mask[b].numpy()
        per_head = []
        for h in range(q.shape[1]):
            attention = _softmax_rows(q[b, h][keep] @ k[b, h][keep].T * scale)
            eigenvalues = np.linalg.eigvals(attention)
            per_head.append(eigenvalues[np.argsort(-np.abs(eigenvalues))])
        out.append(per_head)
    return out


def oracle_lambda2(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None
) -> np.ndarray:
    """``[batch, heads]`` second largest eigenvalue modulus (the largest is 1)."""
    spectra = oracle_eigenvalues(query, key, mask)
    for per_head in spectra:
        for eigenvalues in per_head:
            assert abs(eigenvalues[0] - 1.0) < 1e-9
    return np.array([[abs(e[1]) for e in per_head] for per_head in spectra])


def _random_qk(
    seed: int, batch: int, heads: int, tokens: int, dim: int, norm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, tokens, dim)
    return (
        torch.randn(shape, generator=generator) * norm,
        torch.randn(shape, generator=generator) * norm,
    )


def _cyclic_qk(tokens: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three token groups, group g attending to group g+1: dominant eigenvalues of ``B`` are a
    complex pair near ``r * exp(+-2 pi i / 3)``."""
    generator = torch.Generator().manual_seed(7)
    group = torch.arange(tokens) % 3
    basis = torch.eye(dim)
    key = 2.5 * basis[group] + 0.3 * torch.randn(tokens, dim, generator=generator)
    query = 2.5 * basis[(group + 1) % 3] + 0.3 * torch.randn(
        tokens, dim, generator=generator
    )
    # Two heads with different sharpness.
    query = torch.stack([query, 1.3 * query])[None]
    return query, key.expand(1, 2, tokens, dim).clone()


CASES = {
    "random-50": lambda: _random_qk(0, 2, 3, 50, 16, 1.0),
    "random-300": lambda: _random_qk(1, 1, 2, 300, 16, 1.0),
    "peaked-120": lambda: _random_qk(2, 2, 2, 120, 16, 2.5),
    "near-uniform-200": lambda: _random_qk(3, 1, 3, 200, 16, 0.1),
    "complex-cycle-240": lambda: _cyclic_qk(240, 16),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_krylov_matches_oracle(name: str) -> None:
    query, key = CASES[name]()
    info = second_eigenvalue_magnitude(query, key, return_info=True)
    expected = oracle_lambda2(query, key)
    assert info.modulus.shape == expected.shape
    assert info.modulus.dtype == torch.float32
    assert bool(info.converged.all())
    np.testing.assert_allclose(info.modulus.numpy(), expected, atol=ATOL, rtol=0)


def test_cases_cover_intended_regimes() -> None:
    peaked = oracle_lambda2(*CASES["peaked-120"]())
    uniform = oracle_lambda2(*CASES["near-uniform-200"]())
    assert peaked.min() > 0.7
    assert uniform.max() < 0.01
    for eigenvalues in oracle_eigenvalues(*CASES["complex-cycle-240"]())[0]:
        # Largest after the eigenvalue 1: a genuinely complex conjugate pair.
        assert abs(eigenvalues[1].imag) > 0.2
        assert np.isclose(eigenvalues[1], np.conj(eigenvalues[2]))


@pytest.mark.parametrize("name", ["random-50", "peaked-120", "complex-cycle-240"])
def test_dense_matches_oracle(name: str) -> None:
    query, key = CASES[name]()
    dense = second_eigenvalue_magnitude(query, key, method="dense")
    assert dense.dtype == torch.float32
    np.testing.assert_allclose(
        dense.numpy(), oracle_lambda2(query, key), atol=1e-6, rtol=0
    )


def test_padding_mask_removes_tokens() -> None:
    query, key = _random_qk(4, 3, 2, 150, 16, 1.5)
    lengths = [150, 97, 40]
    mask = torch.arange(150)[None, :] < torch.tensor(lengths)[:, None]
    # Padding in the middle too, not just at the end.
    mask[1, 10:30] = False
    expected = oracle_lambda2(query, key, mask)
    krylov = second_eigenvalue_magnitude(query, key, key_padding_mask=mask)
    dense = second_eigenvalue_magnitude(
        query, key, key_padding_mask=mask, method="dense"
    )
    np.testing.assert_allclose(krylov.numpy(), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(dense.numpy(), expected, atol=1e-6, rtol=0)
    # Padded positions are ignored whatever they hold.
    garbage_q, garbage_k = query.clone(), key.clone()
    padded = ~mask[:, None, :].expand(-1, 2, -1)
    garbage_q[padded] = 1e3
    garbage_k[padded] = -1e3
    again = second_eigenvalue_magnitude(garbage_q, garbage_k, key_padding_mask=mask)
    np.testing.assert_allclose(again.numpy(), expected, atol=ATOL, rtol=0)
    # An all-True mask is the same as no mask.
    full = torch.ones(3, 150, dtype=torch.bool)
    np.testing.assert_allclose(
        second_eigenvalue_magnitude(query, key, key_padding_mask=full).numpy(),
        oracle_lambda2(query, key),
        atol=ATOL,
        rtol=0,
    )


def test_degenerate_chains() -> None:
    # Zero queries: every row is uniform, A = 1 1^T / n exactly, so lambda2 = 0 and the
    # deflated operator is (numerically) zero; the solver must not break down.
    _, key = _random_qk(12, 1, 2, 64, 16, 1.0)
    info = second_eigenvalue_magnitude(torch.zeros_like(key), key, return_info=True)
    assert bool(info.converged.all())
    assert float(info.modulus.max()) < 1e-5
    # Two valid tokens: A = [[a, 1 - a], [1 - b, b]] has lambda2 = a + b - 1.
    query, key = _random_qk(13, 1, 2, 40, 16, 2.0)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, [3, 17]] = True
    scores = query[0][:, [3, 17]] @ key[0][:, [3, 17]].mT / 4.0
    attention = torch.softmax(scores.double(), dim=-1)
    expected = (attention[:, 0, 0] + attention[:, 1, 1] - 1).abs().float()
    for method in ("krylov", "dense"):
        result = second_eigenvalue_magnitude(
            query, key, key_padding_mask=mask, method=method
        )
        torch.testing.assert_close(result[0], expected, atol=ATOL, rtol=0)


def test_bfloat16_inputs_give_float32_output() -> None:
    query, key = _random_qk(5, 2, 2, 160, 16, 2.0)
    query, key = query.bfloat16(), key.bfloat16()
    info = second_eigenvalue_magnitude(query, key, return_info=True)
    assert info.modulus.dtype == torch.float32
    assert info.residual.dtype == torch.float32
    assert bool(info.converged.all())
    # Oracle on the bf16-rounded values, in float64.
    expected = oracle_lambda2(query.float(), key.float())
    np.testing.assert_allclose(info.modulus.numpy(), expected, atol=ATOL, rtol=0)
    dense = second_eigenvalue_magnitude(query.half(), key.half(), method="dense")
    assert dense.dtype == torch.float32


def test_explicit_scale() -> None:
    query, key = _random_qk(6, 1, 2, 100, 16, 1.0)
    result = second_eigenvalue_magnitude(query, key, scale=0.7)
    # scale multiplies q k^T: same as rescaling the query by 0.7 * sqrt(head_dim).
    expected = oracle_lambda2(query * 0.7 * 4.0, key)
    np.testing.assert_allclose(result.numpy(), expected, atol=ATOL, rtol=0)


def test_chunking_gives_same_answer() -> None:
    query, key = _random_qk(8, 2, 2, 200, 16, 1.5)
    whole = second_eigenvalue_magnitude(query, key, query_chunk=200, return_info=True)
    chunked = second_eigenvalue_magnitude(query, key, query_chunk=7, return_info=True)
    assert whole.attention_passes == chunked.attention_passes
    np.testing.assert_allclose(
        chunked.modulus.numpy(), whole.modulus.numpy(), atol=1e-6, rtol=0
    )


def test_info_counts_passes_and_is_deterministic() -> None:
    query, key = _random_qk(9, 1, 2, 120, 16, 2.0)
    info = second_eigenvalue_magnitude(query, key, krylov_dim=3, return_info=True)
    assert isinstance(info, Lambda2Estimate)
    assert info.block_size == 16 and info.krylov_dim == 3
    assert info.attention_passes == (info.restarts + 1) * info.krylov_dim
    assert bool((info.residual <= 1e-5).all())
    again = second_eigenvalue_magnitude(
        query, key, krylov_dim=3, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again, info.modulus)
    # Hitting max_restarts reports unconverged heads instead of failing.
    capped = second_eigenvalue_magnitude(
        query, key, krylov_dim=2, block_size=1, max_restarts=0, return_info=True
    )
    assert capped.attention_passes == 2 and capped.restarts == 0
    assert not bool(capped.converged.all())


def test_matrix_free_path_never_allocates_tokens_squared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens, chunk = 768, 32
    square_bytes = tokens * tokens * 4
    query, key = _random_qk(10, 1, 1, tokens, 16, 1.0)

    seen: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
    original = F.scaled_dot_product_attention

    def recording_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs):
        seen.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(spectral.F, "scaled_dot_product_attention", recording_sdpa)

    def largest_allocation(**kwargs) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            second_eigenvalue_magnitude(
                query, key, krylov_dim=2, max_restarts=1, **kwargs
            )
        return max(event.cpu_memory_usage for event in prof.events())

    matrix_free = largest_allocation(query_chunk=chunk)
    assert seen and all(q[2] <= chunk and k[2] == tokens for q, k, _ in seen)
    assert matrix_free < square_bytes / 8
    # Positive control: the profiler does see the dense path's tokens x tokens matrix.
    assert largest_allocation(method="dense") >= square_bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": torch.zeros(2, 5, 8)}, r"4 dims \[batch, heads, tokens, head_dim\]"),
        ({"key": torch.zeros(1, 2, 6, 8)}, r"query's shape \(1, 2, 5, 8\)"),
        ({"query": torch.zeros(1, 2, 5, 8, dtype=torch.int64)}, "floating"),
        (
            {"query": torch.zeros(1, 2, 1, 8), "key": torch.zeros(1, 2, 1, 8)},
            "tokens >= 2",
        ),
        (
            {"key_padding_mask": torch.ones(1, 4, dtype=torch.bool)},
            r"\(batch, tokens\) = \(1, 5\)",
        ),
        ({"key_padding_mask": torch.ones(1, 5)}, "bool tensor"),
        (
            {"key_padding_mask": torch.tensor([[True, False, False, False, False]])},
            "at least 2",
        ),
        (
            {"query": torch.zeros(1, 2, 2, 8), "key": torch.zeros(1, 2, 2, 8)},
            "method='krylov' needs tokens >= 3",
        ),
        ({"method": "power"}, "'krylov' or 'dense'"),
        ({"krylov_dim": 1}, "krylov_dim must be an int >= 2"),
        ({"max_restarts": -1}, "max_restarts must be an int >= 0"),
        ({"krylov_dim": 2.0}, "krylov_dim must be an int >= 2, got 2.0"),
        ({"block_size": 0}, "block_size must be an int >= 1 or None"),
        ({"query_chunk": 0}, "query_chunk must be an int >= 1 or None"),
        ({"tol": 0.0}, "tol must be > 0"),
        ({"scale": float("nan")}, "finite"),
    ],
)
def test_bad_input_raises(kwargs: dict, message: str) -> None:
    arguments = {
        "query": torch.zeros(1, 2, 5, 8),
        "key": torch.zeros(1, 2, 5, 8),
    } | kwargs
    query, key = arguments.pop("query"), arguments.pop("key")
    with pytest.raises(ValueError, match=message):
        second_eigenvalue_magnitude(query, key, **arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    query, key = _random_qk(11, 2, 2, 300, 64, 2.0)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 250:] = False
    expected = oracle_lambda2(query, key, mask)
    for dtype in (torch.float32, torch.bfloat16):
        q, k = query.cuda().to(dtype), key.cuda().to(dtype)
        result = second_eigenvalue_magnitude(q, k, key_padding_mask=mask.cuda())
        assert result.device.type == "cuda" and result.dtype == torch.float32
        reference = (
            expected
            if dtype == torch.float32
            else oracle_lambda2(query.to(dtype).float(), key.to(dtype).float(), mask)
        )
        np.testing.assert_allclose(result.cpu().numpy(), reference, atol=ATOL, rtol=0)
