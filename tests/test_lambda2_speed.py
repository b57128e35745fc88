"""Fast ``|lambda2|`` (``stop="ritz"``, issue 22): accuracy against dense eigenvalues across
attention regimes, the free first Krylov block from the site's ``(v, z)``, the memory rule of
the head grouping, pass counts, and the ``Lambda2`` analysis on every tiny family.

Stated tolerances: with the default ``tol=1e-3`` the estimate is within ``1e-3`` of the dense
``torch.linalg.eigvals`` value on every regime here, from the free or a random start; with
``tol=1e-2`` within ``1e-2``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vidinterp.kernels import spectral
from vidinterp.kernels.spectral import krylov_plan, second_eigenvalue_magnitude

from benchmark_scripts import load_benchmark

TOKENS = 480
TOL = 1e-3  # the default tol of stop="ritz"
EASY = ("uniform", "moderate", "clustered")


@cache
def bench():
    """The benchmark script, for its attention regimes (:func:`make_case`)."""
    return load_benchmark("lambda2_speed.py")


@cache
def case(regime: str, tokens: int = TOKENS, heads: int = 2):
    query, key, values, output, mask = bench().make_case(regime, tokens, heads)
    dense = second_eigenvalue_magnitude(query, key, key_padding_mask=mask, method="dense")
    return query, key, values, output, mask, dense


def ritz(query, key, values=None, output=None, mask=None, **options):
    if values is not None:
        options.update(values=values, output=output)
    return second_eigenvalue_magnitude(
        query, key, key_padding_mask=mask, stop="ritz", return_info=True, **options
    )


@pytest.mark.parametrize("free", [True, False], ids=["free-start", "random-start"])
@pytest.mark.parametrize("regime", bench().REGIMES)
def test_accuracy_against_dense_eigenvalues(regime: str, free: bool) -> None:
    query, key, values, output, mask, dense = case(regime)
    estimate = ritz(query, key, values, output, mask) if free else ritz(query, key, mask=mask)
    error = (estimate.modulus - dense).abs().max().item()
    assert error <= TOL, f"{regime}: error {error:.2e}"
    assert bool(estimate.converged.all())
    assert bool((estimate.error_estimate <= TOL).all())
    assert bool(estimate.free_start.all()) == free
    assert estimate.modulus.dtype == torch.float32 and estimate.stop == "ritz"


def test_cases_cover_the_regimes() -> None:
    spectra = {regime: case(regime)[-1] for regime in bench().REGIMES}
    assert spectra["uniform"].max() < 0.05  # near-uniform attention
    assert 0.3 < spectra["moderate"].min() and spectra["moderate"].max() < 0.8
    assert spectra["identity"].min() > 0.99  # near-identity: hard, clustered near 1
    query, key, *_ = case("clustered")
    eigenvalues = torch.linalg.eigvals(torch.softmax(query[0, 0] @ key[0, 0].T / 8, -1).double())
    top = eigenvalues.abs().sort(descending=True).values[1:4]
    assert top.min() > 0.85 and top.max() - top.min() < 0.1  # three clustered eigenvalues
    mask = case("masked")[4]
    assert mask is not None and not bool(mask.all())


def test_looser_tolerance_on_the_hardest_regime() -> None:
    query, key, values, output, mask, dense = case("identity")
    fine = ritz(query, key, values, output, mask)
    coarse = ritz(query, key, values, output, mask, tol=1e-2)
    assert (coarse.modulus - dense).abs().max().item() <= 1e-2
    assert coarse.attention_passes < fine.attention_passes


def test_passes_on_easy_regimes() -> None:
    for regime in EASY:
        query, key, values, output, mask, _ = case(regime)
        assert ritz(query, key, values, output, mask).attention_passes <= 3, regime
        assert ritz(query, key, mask=mask).attention_passes <= 4, regime  # +1 without (v, z)


def test_attention_passes_count_only_extra_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key, values, output, mask, _ = case("high")
    sweeps = []
    original = F.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        sweeps.append(q.shape[2])
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(spectral.F, "scaled_dot_product_attention", counting)
    estimate = ritz(query, key, values, output, mask)
    full = [rows for rows in sweeps if rows == TOKENS]
    checks = [rows for rows in sweeps if rows < TOKENS]
    assert len(full) == estimate.attention_passes == int(estimate.passes.max())
    assert checks == [spectral._FREE_CHECK_ROWS]  # the check of z on a few query rows


def _dense_deflated(query, key, mask):
    """``B = (A - 1 u^T)``, padded rows zeroed, float64, ``[heads, P, P]`` of batch element 0."""
    scores = query[0].double() @ key[0].double().mT / math.sqrt(query.shape[-1])
    tokens = scores.shape[-1]
    if mask is None:
        return torch.softmax(scores, -1) - 1.0 / tokens
    valid = mask[0]
    scores = scores.masked_fill(~valid, -math.inf)
    uniform = valid.double() / valid.sum()
    return (torch.softmax(scores, -1) - uniform) * valid[:, None]


@pytest.mark.parametrize("regime", ["high", "masked"])
def test_free_first_block_is_the_operator_applied_to_its_start(regime: str) -> None:
    query, key, values, output, mask, _ = case(regime)
    heads, tokens = query.shape[1], query.shape[2]
    valid = None if mask is None else mask[0].expand(heads, tokens)
    operator = spectral._DeflatedAttention(
        query[0, :, None], key[0, :, None], 1 / math.sqrt(query.shape[-1]), valid, tokens
    )
    start, image, ok = spectral._free_first_block(
        operator, values[0, :, None], output[0, :, None], 64, spectral._FREE_MIN_TOLERANCE
    )
    assert bool(ok.all())
    start, image = start[:, 0].double(), image[:, 0].double()
    torch.testing.assert_close(start.mT @ start, torch.eye(64, dtype=torch.float64).expand(heads, 64, 64),
                               atol=1e-5, rtol=0)
    brute = _dense_deflated(query, key, mask) @ start  # B Q, by brute force
    torch.testing.assert_close(image, brute, atol=2e-5, rtol=0)
    # span(Q) = span(v) (padded rows zeroed): the start block costs no pass.
    kept = values[0].double() * (1.0 if mask is None else mask[0, :, None].double())
    assert (kept - start @ (start.mT @ kept)).abs().max().item() < 1e-4


def test_an_output_that_is_not_this_attention_falls_back_to_a_random_start() -> None:
    query, key, values, output, mask, dense = case("masked")
    unmasked = F.scaled_dot_product_attention(query, key, values)  # the model ignored the mask
    scaled = F.scaled_dot_product_attention(query, key, values, attn_mask=mask[:, None, None, :], scale=0.2)
    for wrong in (unmasked, scaled, torch.zeros_like(output)):
        estimate = ritz(query, key, values, wrong, mask)
        assert not bool(estimate.free_start.any())
        assert (estimate.modulus - dense).abs().max().item() <= TOL
    rank_deficient = values.clone()
    rank_deficient[..., 1] = rank_deficient[..., 0]  # R is singular: no R^{-1}
    estimate = ritz(query, key, rank_deficient, F.scaled_dot_product_attention(
        query, key, rank_deficient, attn_mask=mask[:, None, None, :]), mask)
    assert not bool(estimate.free_start.any())


def test_bfloat16_site_output_is_accepted_and_accurate() -> None:
    query, key, values, _, _, _ = case("grid")
    query, key, values = query.bfloat16(), key.bfloat16(), values.bfloat16()
    output = F.scaled_dot_product_attention(query, key, values)  # as a bf16 forward computes it
    dense = second_eigenvalue_magnitude(query, key, method="dense")
    estimate = ritz(query, key, values, output)
    assert bool(estimate.free_start.all())
    assert (estimate.modulus - dense).abs().max().item() <= TOL


@pytest.mark.parametrize("extra", [0, 128], ids=["float32", "bf16-copies"])
@pytest.mark.parametrize("tokens", [300, 2048, 4096, 8192, 12000, 17550, 30000])
def test_grouping_rule_keeps_memory_within_budget(tokens: int, extra: int) -> None:
    heads, width = 48, 64
    plan = krylov_plan(heads, tokens, width, extra_vectors=extra)
    five_percent = 0.05 * tokens * tokens * 4
    assert plan.budget_bytes == int(max(five_percent, spectral._MIN_BASIS_BYTES))
    assert plan.basis_bytes == plan.group * plan.blocks * width * tokens * 4
    assert plan.basis_bytes < plan.peak_bytes <= plan.budget_bytes
    assert plan.group * plan.groups >= heads and plan.blocks >= 3
    if five_percent >= spectral._MIN_BASIS_BYTES:  # large P: the 5% bound itself
        assert plan.peak_bytes <= five_percent


def test_target_size_fits_five_percent_with_full_cycles() -> None:
    tokens = 17_550
    five_percent = 0.05 * tokens * tokens * 4  # 61.6 MB
    plan = krylov_plan(48, tokens, 64)
    assert plan.group == 1 and plan.groups == 48 and plan.blocks == spectral._MAX_CYCLE_BLOCKS
    assert plan.basis_bytes < plan.peak_bytes < five_percent
    assert krylov_plan(48, tokens, 64, extra_vectors=128).peak_bytes < five_percent  # bf16 inputs


class _Shapes(TorchDispatchMode):
    """Records the shape, dtype and size of every tensor an op creates."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[tuple[int, ...], torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for item in tree_flatten(output)[0]:
            if isinstance(item, torch.Tensor):
                self.seen.append((tuple(item.shape), item.dtype, item.numel() * item.element_size()))
        return output


def test_allocated_basis_follows_the_grouping_rule() -> None:
    tokens, heads = 1024, 16
    query, key, values, output, _ = bench().make_case("moderate", tokens, heads)
    plan = krylov_plan(heads, tokens, 64)
    assert 1 < plan.groups < heads  # several heads per group, several groups
    probe = _Shapes()
    with probe:
        estimate = ritz(query, key, values, output)
    assert estimate.groups == plan.groups and estimate.basis_bytes == plan.basis_bytes
    # The largest float32 tensor of vectors over the tokens is the basis of one group.
    chains = [size for shape, dtype, size in probe.seen if dtype == torch.float32 and shape[-1] == tokens]
    assert max(chains) == plan.basis_bytes <= plan.budget_bytes
    # Every sweep covers at most one group of heads.
    assert max(shape[0] for shape, dtype, _ in probe.seen if len(shape) == 4 and shape[-2] == tokens) <= plan.group


def test_residual_solver_stays_available_and_default() -> None:
    query, key, _, _, mask, dense = case("high")
    exact = second_eigenvalue_magnitude(query, key, key_padding_mask=mask, return_info=True)
    assert exact.stop == "residual" and bool((exact.residual <= 1e-5).all())
    assert (exact.modulus - dense).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="stop must be 'ritz' or 'residual'"):
        second_eigenvalue_magnitude(query, key, stop="change")
    with pytest.raises(ValueError, match="values and output must be given together"):
        second_eigenvalue_magnitude(query, key, values=query, stop="ritz")


def test_lambda2_analysis_seeds_from_the_site_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import vidinterp.analyses.lambda2 as module
    from vidinterp.testing.tiny import random_visit

    visit = random_visit(heads=2, head_dim=16, frames=3, height=6, width=6, prompt_tokens=10)
    q, k, v = (visit.tensors[name] for name in "qkv")
    truth = second_eigenvalue_magnitude(q, k, method="dense")[0]
    estimates = []

    def recording(*args, **kwargs):
        estimates.append(second_eigenvalue_magnitude(*args, **kwargs))
        return estimates[-1]

    monkeypatch.setattr(module, "second_eigenvalue_magnitude", recording)
    consistent = dataclasses.replace(visit, tensors={**visit.tensors, "z": F.scaled_dot_product_attention(q, k, v)})
    for site_visit, free in ((consistent, True), (visit, False)):  # random_visit's z is not A v
        analysis = module.Lambda2()
        analysis.reset()
        analysis.update(site_visit)
        estimate = estimates[-1]
        assert estimate.stop == "ritz" and bool(estimate.free_start.all()) == free
        assert (estimate.modulus[0] - truth).abs().max().item() <= TOL
    exact = module.Lambda2(stop="residual")  # the exact solver stays one option away
    exact.reset()
    exact.update(consistent)
    assert estimates[-1].stop == "residual" and estimates[-1].free_start is None


def test_site_output_is_this_attention_on_every_tiny_family() -> None:
    """On every tiny family, ``z`` at a visit is a fresh SDPA of the visit's ``q, k, v`` (under
    the key padding mask), so the analysis gets its first block for free and stays accurate."""
    import vidinterp.analyses.lambda2 as module
    from vidinterp.kernels.tokens import key_padding_mask
    from vidinterp.testing import tiny_families, tiny_pipeline
    from vidinterp.testing.conformance import renoised

    class Probe(module.Lambda2):
        def reset(self) -> None:
            super().reset()
            self.rows: list[tuple[float, bool, float]] = []

        def update(self, visit) -> None:
            q, k, v, z = (visit.get(name, "all") for name in "qkvz")
            mask = key_padding_mask(visit)
            attn_mask = None if mask is None else mask[:, None, None, :]
            fresh = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
            mismatch = fresh - z.float()
            if mask is not None:
                mismatch = mismatch * mask[:, None, :, None]
            relative = (mismatch.square().mean().sqrt() / v.float().square().mean().sqrt()).item()
            estimate = second_eigenvalue_magnitude(
                q, k, values=v, output=z, key_padding_mask=mask, stop="ritz", return_info=True
            )
            dense = second_eigenvalue_magnitude(q, k, key_padding_mask=mask, method="dense")
            error = (estimate.modulus - dense).abs().max().item()
            self.rows.append((relative, bool(estimate.free_start.all()), error))
            super().update(visit)

    checked = []
    for family in tiny_families():
        probe = Probe()
        renoised(tiny_pipeline(family), probe)
        assert probe.rows, family
        assert max(relative for relative, _, _ in probe.rows) < 1e-6, family
        assert any(free for _, free, _ in probe.rows), family  # LTX's first visit has rank-deficient v
        assert max(error for *_, error in probe.rows) <= TOL, family
        checked.append(family)
    assert {"cogvideox", "hunyuan_video", "mochi", "flux", "sd3", "wan", "ltx"} <= set(checked)
