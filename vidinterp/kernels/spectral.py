"""Second eigenvalue of attention read as a Markov chain (DTMC ``|lambda2|`` layer selection).

Each head's joint attention matrix ``A = softmax(q k^T * scale)`` over all tokens is row
stochastic: ``A 1 = 1``, so its largest eigenvalue is 1 and ``|lambda2|``, the modulus of the
second largest, measures how slowly the chain mixes. This module computes ``|lambda2|`` per
(batch, head) from query/key tensors alone; it knows nothing about models.

The default path is matrix free. ``A X`` for a block ``X`` of vectors is exactly an attention
call with ``X`` as the values, so the ``tokens x tokens`` matrix is never formed: each product is
a sweep of :func:`torch.nn.functional.scaled_dot_product_attention` over query chunks, batched
over all heads. The known right eigenvector ``1`` is removed by Wielandt deflation with the
uniform left vector ``u = 1 / n``::

    B = A - 1 u^T,   B x = A x - mean(x) 1,

whose spectrum is that of ``A`` with the eigenvalue 1 replaced by 0, so ``|lambda2|`` is the
spectral radius of ``B``. That radius is found with a block Arnoldi method: every attention
sweep multiplies a whole block of ``block_size`` vectors, which costs about as much as a single
vector because the ``q k^T`` and ``exp`` work is shared across value columns.

Two stopping rules (``stop``):

* ``"ritz"`` (fast; what the ``Lambda2`` analysis uses): the block Krylov space grows
  without restarts while memory allows and the solver stops once the error left in the
  dominant Ritz modulus, extrapolated from its changes over the last two attention passes, is
  at most ``tol`` (default ``1e-3``), or after ``max_passes`` passes. Heads are processed in
  groups sized so that the Krylov basis stays within ``memory_fraction`` (5%) of one float32
  ``tokens x tokens`` matrix (:func:`krylov_plan`). When the caller hands over the site's own
  values ``v`` and attention output ``z = A v`` (as the forward already computed them), the
  first block ``Q`` (``v = Q R``) costs no pass: ``B Q = (z - 1 u^T v) R^{-1}``.
* ``"residual"`` (default, exact, slower): explicit restarts until the dominant Ritz pair's
  residual ``||B x - theta x||`` is at most ``tol`` (default ``1e-5``). The residual of a non-normal
  operator converges long after the eigenvalue, so this typically takes several times more
  passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F

__all__ = ["KrylovPlan", "Lambda2Estimate", "krylov_plan", "second_eigenvalue_magnitude"]

# Upper bound, in bytes, on one query chunk's float32 score block (batch * heads * chunk *
# tokens * 4) when ``query_chunk`` is left to be chosen automatically. Fused SDPA kernels never
# allocate that block; the math fallback does, so this caps the extra memory of every backend.
_AUTO_CHUNK_SCORE_BYTES = 256 * 2**20

#: default ``tol`` of each stopping rule: change of the dominant Ritz modulus over one pass
#: (``"ritz"``; layer scoring thresholds of 0.7 / 0.75 need about 1e-2), residual norm
#: (``"residual"``).
DEFAULT_TOL = {"ritz": 1e-3, "residual": 1e-5}
#: most basis blocks per head in one ``"ritz"`` cycle; bounds the small dense eigenproblem
#: (``(blocks - 1) * block_size`` square, solved after every block step) to 448 at width 64.
_MAX_CYCLE_BLOCKS = 8
#: floor of the ``"ritz"`` memory budget: below ``P ~ 13,000`` (5%) this, not the fraction,
#: binds (it keeps full 8-block cycles from ``P ~ 4,000``, where 5% of ``P x P`` would not).
_MIN_BASIS_BYTES = 32 * 2**20
#: workspace of one ``"ritz"`` step, in blocks of ``block_size`` float32 vectors per head: the
#: contiguous values block, the attention output and the orthonormalisation temporaries
#: (measured heap peak at P = 4096 / 8192: 14.1 / 26.1 MiB against estimates of 17 / 29 MiB).
_WORKSPACE_BLOCKS = 4
#: cap of the factor ``rho / (1 - rho)`` that turns the last Ritz change into an error estimate.
_MAX_ERROR_FACTOR = 10.0
#: query rows on which the site's attention output is recomputed before it is trusted.
_FREE_CHECK_ROWS = 32
#: floor of the accepted relative RMS mismatch of the site's output (float32 sites).
_FREE_MIN_TOLERANCE = 1e-4
#: smallest accepted ``min |R_ii| / max |R_ii|`` of the values' QR (``R^{-1}`` amplifies the
#: output's rounding by about the inverse of this).
_FREE_MIN_CONDITION = 1e-3


@dataclass(frozen=True)
class Lambda2Estimate:
    """Result of :func:`second_eigenvalue_magnitude` with ``return_info=True``.

    Attributes:
        modulus: ``[batch, heads]`` float32, the estimate of ``|lambda2|`` (dimensionless,
            in ``[0, 1]`` up to rounding).
        residual: ``[batch, heads]`` float32, Euclidean norm of ``B x - theta x`` for the
            returned unit-norm Ritz pair ``(theta, x)`` (same units as ``modulus``); exactly 0
            for ``method="dense"``.
        converged: ``[batch, heads]`` bool, ``residual <= tol``.
        attention_passes: number of attention-equivalent passes, i.e. sweeps of
            ``A @ values`` over all query tokens of all heads (one sweep multiplies a whole
            block of vectors). ``method="dense"`` forms ``A`` once and counts 1.
        restarts: number of Krylov restarts performed (0 for ``method="dense"``).
        block_size: vectors multiplied per pass (value width); 0 for ``method="dense"``.
        krylov_dim: block Krylov steps (= attention passes) per restart cycle; the subspace of
            one cycle has ``krylov_dim * block_size`` dimensions. 0 for ``method="dense"``.
        stop: the stopping rule used, ``"ritz"`` or ``"residual"`` (``"dense"`` for the
            dense method).

    With ``stop="ritz"`` the fields read differently:

    * ``converged`` is ``error_estimate <= tol``, not a residual test (``residual`` is still
      the residual of the returned Ritz pair, usually much larger than the eigenvalue's error);
    * ``attention_passes`` counts only the extra sweeps the solver made (a free first block
      costs none), and is the largest count of any head group; ``passes`` has each head's;
    * ``restarts`` is the most restarts of any head group and ``krylov_dim`` the block steps
      per cycle (``KrylovPlan.blocks - 1``).

    Attributes only set by ``stop="ritz"`` (None otherwise):
        change: ``[batch, heads]`` float32, change of the dominant Ritz modulus over the last
            pass (``inf`` when fewer than two estimates were compared).
        error_estimate: ``[batch, heads]`` float32, the error left estimated from the last two
            changes (geometric extrapolation, see ``stop`` in
            :func:`second_eigenvalue_magnitude`); the stop test compares it with ``tol``.
        passes: ``[batch, heads]`` int64, attention sweeps made for that head (its group's);
            ``passes.float().mean()`` is the cost in units of one attention forward.
        free_start: ``[batch, heads]`` bool, whether the head started from the free first
            block (site values and output) rather than a random block.
        groups: number of head groups (0 otherwise).
        basis_bytes: bytes of one group's float32 Krylov basis (0 otherwise).
    """

    modulus: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    attention_passes: int
    restarts: int
    block_size: int
    krylov_dim: int
    stop: str = "residual"
    change: torch.Tensor | None = None
    passes: torch.Tensor | None = None
    error_estimate: torch.Tensor | None = None
    free_start: torch.Tensor | None = None
    groups: int = 0
    basis_bytes: int = 0


@overload
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    values: torch.Tensor | None = ...,
    output: torch.Tensor | None = ...,
    scale: float | None = ...,
    key_padding_mask: torch.Tensor | None = ...,
    method: Literal["krylov", "dense"] = ...,
    stop: Literal["ritz", "residual"] = ...,
    tol: float | None = ...,
    max_passes: int = ...,
    memory_fraction: float = ...,
    krylov_dim: int = ...,
    block_size: int | None = ...,
    max_restarts: int = ...,
    query_chunk: int | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    values: torch.Tensor | None = ...,
    output: torch.Tensor | None = ...,
    scale: float | None = ...,
    key_padding_mask: torch.Tensor | None = ...,
    method: Literal["krylov", "dense"] = ...,
    stop: Literal["ritz", "residual"] = ...,
    tol: float | None = ...,
    max_passes: int = ...,
    memory_fraction: float = ...,
    krylov_dim: int = ...,
    block_size: int | None = ...,
    max_restarts: int = ...,
    query_chunk: int | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[True],
) -> Lambda2Estimate: ...


@torch.no_grad()
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    values: torch.Tensor | None = None,
    output: torch.Tensor | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    method: Literal["krylov", "dense"] = "krylov",
    stop: Literal["ritz", "residual"] = "residual",
    tol: float | None = None,
    max_passes: int = 12,
    memory_fraction: float = 0.05,
    krylov_dim: int = 4,
    block_size: int | None = None,
    max_restarts: int = 40,
    query_chunk: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
) -> torch.Tensor | Lambda2Estimate:
    """``|lambda2|`` of ``A = softmax(query @ key^T * scale)`` per (batch, head).

    Args:
        query: ``[batch, heads, tokens, head_dim]`` floating tensor (any float dtype, any
            device). All computation is float32 (float64 for the small projected problem)
            whatever the input dtype.
        key: same shape, dtype and device as ``query``; self-attention over the same tokens, so
            ``A`` is square (``tokens x tokens``).
        values: optional ``[batch, heads, tokens, dv]`` values of the same attention call, with
            ``output`` its result ``softmax(query key^T * scale) values`` (under the same
            ``key_padding_mask``), as a model's forward computed them. ``stop="ritz"`` then takes
            ``span(values)`` as the first Krylov block and gets its image from ``output`` without
            an attention pass, after checking ``output`` against a fresh float32 attention on
            32 query rows (relative RMS mismatch at most ``max(1e-4, eps)`` of the least
            precise input dtype) and the conditioning of ``values``; a group of heads that fails
            the check starts from a random block. Ignored by ``stop="residual"`` and
            ``method="dense"``.
        output: see ``values``; both or neither.
        scale: multiplier of the dot products; default ``1 / sqrt(head_dim)``.
        key_padding_mask: optional bool ``[batch, tokens]``, True for valid tokens. Padded tokens
            are removed from the chain entirely (as rows and as columns); every batch element
            needs at least 2 valid tokens.
        method: ``"krylov"`` (matrix free, default) or ``"dense"`` (forms ``A`` in float64 and
            calls :func:`torch.linalg.eigvals`; an oracle for small ``tokens``).
        stop: stopping rule of ``method="krylov"``. ``"residual"`` (default, exact): the
            restarted solver, stop once every head's dominant Ritz pair has residual
            ``||B x - theta x|| <= tol`` (or after ``max_restarts`` restarts). ``"ritz"``
            (fast; the default of the :class:`~vidinterp.analyses.lambda2.Lambda2` analysis):
            after each attention pass, the change ``d_n`` of every head's dominant Ritz modulus
            over that pass gives an estimate of the error left: ``d_n`` at the first comparison
            (and the first after a restart), then ``d_n * rho / (1 - rho)`` with
            ``rho = d_n / d_{n-1}``, capped at ``10 d_n``. Stop once every estimate is at most
            ``tol`` (or after ``max_passes`` passes). Heads go in groups whose extra memory fits
            ``memory_fraction``; the first block is free from ``values``/``output``.
        tol: default ``1e-3`` for ``"ritz"`` (errors below it against dense eigenvalues on
            easy to hard, clustered spectra in the tests; the 0.7 / 0.75 layer thresholds need
            about ``1e-2``) and ``1e-5`` for ``"residual"``. Float32 attention limits useful
            values to about ``1e-6``.
        max_passes: ``"ritz"``: most attention passes per head group (at least 1).
        memory_fraction: ``"ritz"``: a head group's estimated extra peak memory (Krylov basis,
            workspace, projected problem) is kept within this fraction of one float32
            ``tokens x tokens`` matrix, or 32 MiB if that is more (see :func:`krylov_plan`).
        krylov_dim: ``"residual"``: block Krylov steps per restart cycle, i.e.
            attention passes per cycle; at least 2, since a restart keeps ``block_size`` Ritz
            vectors of the cycle's ``krylov_dim * block_size``-dimensional subspace. Clipped so
            the basis (``(krylov_dim + 1) * block_size`` vectors) fits in ``tokens``.
        block_size: vectors multiplied per attention pass (the value width). Default
            ``head_dim``: fused SDPA kernels (e.g. the CPU flash kernel) require the value width
            to equal ``head_dim``, and extra value columns cost little next to ``q k^T``.
            Clipped to ``tokens // 3``.
        max_restarts: ``"residual"``: restarts after the first cycle; at most
            ``(max_restarts + 1) * krylov_dim`` attention passes are used.
        query_chunk: query rows per SDPA call. Extra memory is
            ``O(batch * heads * query_chunk * tokens)`` float32 on backends that materialise
            scores (heads of one group for ``"ritz"``), plus the Krylov basis. Default: the
            largest chunk whose score block is at most 256 MiB.
        generator: source of the random start block; default a fresh generator seeded with 0
            on the query's device, so results are reproducible.
        return_info: also return convergence data and the number of passes.

    Returns:
        ``[batch, heads]`` float32 tensor of ``|lambda2|`` on the query's device, or a
        :class:`Lambda2Estimate` when ``return_info`` is True. For converged heads (see
        ``Lambda2Estimate.converged``) the error is typically below ``tol``; neither rule bounds
        it exactly, since attention is not normal and ill-conditioned eigenvalues can be less
        accurate. ``"ritz"`` clamps its estimates to at most 1; on nearly decomposable chains
        (``A ~ I``, many eigenvalues within ``1e-3`` of 1) its Ritz values can stagnate and
        errors of a few ``tol`` occur.

    ``stop="ritz"`` synchronises with the host twice per block step (the stop decision and the
    rank-deficiency test of :func:`_orthonormalise`) and once per head group that was given
    ``values``/``output`` (whether to trust them).

    Raises:
        TypeError: if ``query``, ``key``, ``values``, ``output`` or ``key_padding_mask`` is not
            a tensor.
        ValueError: for malformed shapes, dtypes, devices or parameters.
    """
    batch, heads, tokens, head_dim = _check_qk(query, key)
    valid = _check_mask(key_padding_mask, batch, tokens, query.device)
    _check_values(values, output, query)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale}")

    if method == "dense":
        estimate = _dense(query, key, scale, valid)
    elif method == "krylov":
        for name, value, low, optional in (
            ("krylov_dim", krylov_dim, 2, False),
            ("max_restarts", max_restarts, 0, False),
            ("block_size", block_size, 1, True),
            ("query_chunk", query_chunk, 1, True),
            ("max_passes", max_passes, 1, False),
        ):
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                expected = f"an int >= {low}" + (" or None" if optional else "")
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if stop not in DEFAULT_TOL:
            raise ValueError(f"stop must be 'ritz' or 'residual', got {stop!r}")
        if tol is None:
            tol = DEFAULT_TOL[stop]
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        if tokens < 3:
            raise ValueError(
                f"method='krylov' needs tokens >= 3, got {tokens}; use method='dense'"
            )
        width = min(head_dim if block_size is None else block_size, tokens // 3)
        if stop == "ritz":
            estimate = _ritz_solver(
                query,
                key,
                values,
                output,
                scale,
                valid,
                block_size=width,
                tol=tol,
                max_passes=max_passes,
                memory_fraction=memory_fraction,
                query_chunk=query_chunk,
                generator=generator,
            )
        else:
            if query_chunk is None:
                query_chunk = max(
                    1, _AUTO_CHUNK_SCORE_BYTES // (batch * heads * tokens * 4)
                )
            operator = _DeflatedAttention(
                query, key, scale, valid, min(query_chunk, tokens)
            )
            estimate = _block_arnoldi(
                operator,
                block_size=width,
                krylov_dim=krylov_dim,
                max_restarts=max_restarts,
                tol=tol,
                generator=generator,
            )
    else:
        raise ValueError(f"method must be 'krylov' or 'dense', got {method!r}")
    return estimate if return_info else estimate.modulus


def _check_values(
    values: torch.Tensor | None, output: torch.Tensor | None, query: torch.Tensor
) -> None:
    """Validate the optional site ``values``/``output`` pair against ``query``."""
    if values is None and output is None:
        return
    if values is None or output is None:
        raise ValueError("values and output must be given together (or neither)")
    for name, tensor in (("values", values), ("output", output)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
        if tensor.device != query.device:
            raise ValueError(f"{name} must be on the query's device {query.device}, got {tensor.device}")
    if values.ndim != 4 or tuple(values.shape[:3]) != tuple(query.shape[:3]):
        raise ValueError(
            f"values must have shape [batch, heads, tokens, dv] = {tuple(query.shape[:3])} + (dv,), "
            f"got {tuple(values.shape)}"
        )
    if output.shape != values.shape:
        raise ValueError(f"output must have the values' shape {tuple(values.shape)}, got {tuple(output.shape)}")


def _check_qk(query: torch.Tensor, key: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate ``query``/``key`` and return ``(batch, heads, tokens, head_dim)``."""
    for name, tensor in (("query", query), ("key", key)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if tensor.ndim != 4:
            raise ValueError(
                f"{name} must have 4 dims [batch, heads, tokens, head_dim], "
                f"got shape {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise ValueError(
                f"{name} must be a floating tensor, got dtype {tensor.dtype}"
            )
    if key.shape != query.shape:
        raise ValueError(
            f"key must have the query's shape {tuple(query.shape)} "
            f"[batch, heads, tokens, head_dim], got {tuple(key.shape)}"
        )
    if key.device != query.device:
        raise ValueError(
            f"key must be on the query's device {query.device}, got {key.device}"
        )
    batch, heads, tokens, head_dim = query.shape
    if min(batch, heads, head_dim) < 1 or tokens < 2:
        raise ValueError(
            "query/key need batch, heads, head_dim >= 1 and tokens >= 2, "
            f"got shape {tuple(query.shape)}"
        )
    return batch, heads, tokens, head_dim


def _check_mask(
    mask: torch.Tensor | None, batch: int, tokens: int, device: torch.device
) -> torch.Tensor | None:
    """Validate ``key_padding_mask``; return it (bool, on ``device``) or None if all valid."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a torch.Tensor or None, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(
            "key_padding_mask must be a bool tensor [batch, tokens] (True = valid), "
            f"got dtype {mask.dtype}"
        )
    if tuple(mask.shape) != (batch, tokens):
        raise ValueError(
            f"key_padding_mask must have shape (batch, tokens) = {(batch, tokens)}, "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.to(device)
    counts = mask.sum(dim=-1)
    if bool((counts < 2).any()):
        raise ValueError(
            "key_padding_mask must leave at least 2 valid tokens per batch element, "
            f"got counts {counts.tolist()}"
        )
    return None if bool(mask.all()) else mask


def _dense(
    query: torch.Tensor, key: torch.Tensor, scale: float, valid: torch.Tensor | None
) -> Lambda2Estimate:
    """Spectral radius of the explicitly formed deflated matrix ``B``, in float64."""
    scores = torch.matmul(query.double(), key.double().mT) * scale  # [b, h, t, t]
    tokens = scores.shape[-1]
    if valid is None:
        deflated = torch.softmax(scores, dim=-1) - 1.0 / tokens
    else:
        scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
        uniform = valid.double() / valid.sum(dim=-1, keepdim=True)  # u, [b, t]
        deflated = torch.softmax(scores, dim=-1) - uniform[:, None, None, :]
        # Padded rows/columns become zero: their eigenvalues are 0 and the rest are those of
        # the valid block, so the spectral radius is unchanged.
        deflated = deflated * (valid[:, None, :, None] & valid[:, None, None, :])
    modulus = torch.linalg.eigvals(deflated).abs().amax(dim=-1).float()
    return Lambda2Estimate(
        modulus=modulus,
        residual=torch.zeros_like(modulus),
        converged=torch.ones_like(modulus, dtype=torch.bool),
        attention_passes=1,
        restarts=0,
        block_size=0,
        krylov_dim=0,
        stop="dense",
    )


class _DeflatedAttention:
    """``X -> B X`` with ``B = A - 1 u^T`` (padded rows zeroed), via chunked float32 SDPA."""

    def __init__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: float,
        valid: torch.Tensor | None,
        query_chunk: int,
    ) -> None:
        self.query = query.float()
        self.key = key.float()
        self.batch, self.heads, self.tokens = query.shape[:3]
        self.device = query.device
        self.scale = scale
        self.query_chunk = query_chunk
        self.passes = 0
        self.attn_mask: torch.Tensor | None = None
        self.row_weight: torch.Tensor | None = None
        self.row_keep: torch.Tensor | None = None
        if valid is not None:
            # Keys: [b, 1, 1, t], broadcast over heads and query rows.
            self.attn_mask = valid[:, None, None, :]
            # u as a weight over tokens, [b, 1, t, 1]: 1 / n_valid on valid tokens, else 0.
            uniform = valid.float() / valid.sum(dim=-1, keepdim=True)
            self.row_weight = uniform[:, None, :, None]
            self.row_keep = valid[:, None, :, None]

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """``B @ block`` for ``block`` ``[batch, heads, tokens, width]`` float32 (one pass)."""
        # Fused kernels (e.g. CPU flash) need unit-stride values; otherwise SDPA silently
        # falls back to the math path, which materialises each chunk's score block.
        block = block.contiguous()
        tokens = block.shape[2]
        if self.query_chunk >= tokens:  # one call: no separate output buffer
            out = F.scaled_dot_product_attention(
                self.query, self.key, block, attn_mask=self.attn_mask, scale=self.scale
            )
        else:
            out = torch.empty_like(block)
            for start in range(0, tokens, self.query_chunk):
                stop = min(start + self.query_chunk, tokens)
                out[:, :, start:stop] = F.scaled_dot_product_attention(
                    self.query[:, :, start:stop],
                    self.key,
                    block,
                    attn_mask=self.attn_mask,
                    scale=self.scale,
                )
        self.passes += 1
        if self.row_weight is None or self.row_keep is None:
            return out.sub_(block.mean(dim=2, keepdim=True))
        mean = self.row_weight.mT @ block  # u^T block, [b, h, 1, width]
        return out.sub_(mean).mul_(self.row_keep)


def _qr(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR of a tall ``[..., tokens, width]`` matrix, handed to LAPACK column-major (its
    native layout): from a row-major input, ``torch.linalg.qr`` on a busy multi-threaded CPU
    was measured 70x slower (0.7 s against 0.01 s at 17,550 x 64)."""
    return torch.linalg.qr(matrix.mT.contiguous().mT)


def _orthonormalise(
    block: torch.Tensor, rows: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormalise the columns of ``block`` (overwritten) against the orthonormal ``rows``.

    ``block`` is ``[..., tokens, width]`` and ``rows`` ``[..., n, tokens]`` (the basis stored as
    rows, so leading slices of it are used in place, without copies). Returns
    ``(q, coeff, r)`` with ``block = rows^T coeff + q r`` (up to rounding) where ``q``
    ``[..., tokens, width]`` has orthonormal columns orthogonal to ``rows``; ``r`` is square but
    not necessarily triangular. Classical Gram-Schmidt twice, a QR, and one more projection of
    its columns. For a rank-deficient block (the Krylov space has exhausted an invariant
    subspace, e.g. the few valid tokens of a masked chain) QR's completion columns are arbitrary
    and may lie in ``span(rows)``: if a column keeps less than half its norm in that last
    projection, such columns are replaced by random vectors from ``generator`` projected twice,
    the columns are orthonormalised again and ``r = q^T block`` (one host synchronisation).
    """
    coeff = rows @ block
    block.sub_(rows.mT @ coeff)
    second = rows @ block
    block.sub_(rows.mT @ second)
    q, r = _qr(block)
    third = rows @ q
    q.sub_(rows.mT @ third)
    # block = q_old r with q_old = q + rows^T third.
    coeff = coeff + second + third @ r
    deficient = third.square().sum(dim=-2, keepdim=True) > 0.75  # squared norm left < 1/4
    if not bool(deficient.any()):
        return q, coeff, r
    fresh = torch.randn(q.shape, generator=generator, device=generator.device).to(q)
    for _ in range(2):
        fresh.sub_(rows.mT @ (rows @ fresh))
    q = torch.where(deficient, fresh, q)
    del fresh
    q = _qr(q.sub_(rows.mT @ (rows @ q)))[0]
    return q, coeff, q.mT @ block  # the projected block lies in span(q)


def _block_arnoldi(
    operator: _DeflatedAttention,
    *,
    block_size: int,
    krylov_dim: int,
    max_restarts: int,
    tol: float,
    generator: torch.Generator | None,
) -> Lambda2Estimate:
    """Spectral radius of ``operator`` by explicitly restarted block Arnoldi.

    Each cycle builds ``B V_m = V_{m+1} H`` with ``krylov_dim`` blocks of ``block_size``
    orthonormal float32 vectors, takes the Ritz values of the square part of ``H`` (float64
    :func:`torch.linalg.eig`), and restarts from a real orthonormal basis of the ``block_size``
    Ritz vectors of largest modulus (real and imaginary parts of complex pairs).
    """
    batch, heads, tokens = operator.batch, operator.heads, operator.tokens
    device = operator.device
    p = block_size
    steps = min(krylov_dim, tokens // p - 1)  # >= 2 as p <= tokens // 3
    dim = steps * p
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    start = torch.randn(
        (batch, heads, tokens, p), generator=generator, device=generator.device
    ).to(device)
    start = _qr(start)[0]  # [b, h, t, p]

    restarts = 0
    while True:
        rows = start.new_empty(batch, heads, dim + p, tokens)  # basis vectors as rows
        rows[..., :p, :] = start.mT
        hess = torch.zeros(
            batch, heads, dim + p, dim, dtype=torch.float64, device=device
        )
        for j in range(steps):
            cols = slice(j * p, (j + 1) * p)
            image = operator(rows[..., cols, :].mT)
            q, coeff, r = _orthonormalise(image, rows[..., : (j + 1) * p, :], generator)
            rows[..., (j + 1) * p : (j + 2) * p, :] = q.mT
            hess[..., : (j + 1) * p, cols] = coeff.double()
            hess[..., (j + 1) * p : (j + 2) * p, cols] = r.double()

        theta, vectors = torch.linalg.eig(hess[..., :dim, :])  # Ritz pairs, complex128
        order = theta.abs().argsort(dim=-1, descending=True)
        theta = theta.gather(-1, order)
        vectors = vectors.gather(-1, order[..., None, :].expand_as(vectors))
        # ||B V y - theta V y|| = ||H_{m+1,m} y_m|| for unit y (V orthonormal).
        tail = hess[..., dim:, dim - p :].to(vectors.dtype)
        residual = torch.linalg.vector_norm(
            tail @ vectors[..., dim - p :, :1], dim=(-2, -1)
        )
        converged = residual <= tol
        if bool(converged.all()) or restarts == max_restarts:
            break
        # Real restart block: Re(y) for real Ritz values and the first of a conjugate pair,
        # Im(y) for the second, so a pair contributes its real invariant plane.
        lead = vectors[..., :p]
        real_block = torch.where(theta[..., None, :p].imag < 0, lead.imag, lead.real)
        combination = torch.linalg.qr(real_block)[0].to(rows.dtype)  # [b, h, dim, p]
        start = _qr(rows[..., :dim, :].mT @ combination)[0]
        restarts += 1

    return Lambda2Estimate(
        modulus=theta[..., 0].abs().float(),
        residual=residual.float(),
        converged=converged,
        attention_passes=operator.passes,
        restarts=restarts,
        block_size=p,
        krylov_dim=steps,
    )


# ---------------------------------------------------------------- Ritz-stopped solver (default)


@dataclass(frozen=True)
class KrylovPlan:
    """How :func:`second_eigenvalue_magnitude` (``stop="ritz"``) splits the work.

    Attributes:
        group: heads processed together (one SDPA sweep covers a group); groups never span
            two batch elements, so they are views of the inputs.
        groups: number of groups, ``batch * ceil(heads / group)``.
        blocks: basis blocks kept per head; a cycle takes ``blocks - 1`` block steps and then
            restarts (for free, without an attention pass) from the leading Ritz vectors.
        block_size: vectors per block (the value width of one sweep).
        tokens: chain length ``P``.
        extra_vectors: per-head float32 vectors of ``P`` entries held besides the basis and the
            workspace (float32 copies of lower-precision ``q`` and ``k``: ``2 * head_dim``).
        budget_bytes: the memory budget the plan was made for.
    """

    group: int
    groups: int
    blocks: int
    block_size: int
    tokens: int
    extra_vectors: int
    budget_bytes: int

    @property
    def basis_bytes(self) -> int:
        """Float32 bytes of one group's Krylov basis: ``group * blocks * block_size * P * 4``."""
        return self.group * self.blocks * self.block_size * self.tokens * 4

    @property
    def peak_bytes(self) -> int:
        """Estimated extra peak bytes of one group: basis, :data:`_WORKSPACE_BLOCKS` blocks of
        workspace (values block, attention output, orthonormalisation temporaries), the extra
        vectors and the projected problem (float64 ``H`` and complex Ritz vectors)."""
        return _peak_bytes(
            self.group, self.blocks, self.block_size, self.tokens, self.extra_vectors
        )


def _peak_bytes(group: int, blocks: int, width: int, tokens: int, extra_vectors: int) -> int:
    """See :attr:`KrylovPlan.peak_bytes`."""
    vectors = (blocks + _WORKSPACE_BLOCKS) * width + extra_vectors
    square = (blocks - 1) * width
    projected = blocks * width * square * 8 + square * square * 16
    return group * (vectors * tokens * 4 + projected)


def krylov_plan(
    heads: int,
    tokens: int,
    block_size: int,
    *,
    batch: int = 1,
    extra_vectors: int = 0,
    max_passes: int = 12,
    memory_fraction: float = 0.05,
    free_start: bool = True,
) -> KrylovPlan:
    """The grouping rule of ``stop="ritz"``: heads per group and basis blocks per head.

    Budget: ``max(memory_fraction * tokens**2 * 4, 32 MiB)`` bytes, the fraction of one float32
    ``tokens x tokens`` matrix with a floor (:data:`_MIN_BASIS_BYTES`) so that small chains,
    where memory is no concern, are not starved. It must hold a group's estimated extra peak
    (:attr:`KrylovPlan.peak_bytes`): per head, ``blocks`` basis blocks plus
    :data:`_WORKSPACE_BLOCKS` blocks of workspace plus ``extra_vectors``, plus the projected
    problem. Each head wants enough
    blocks to never restart (``max_passes + 1``, plus one for a free first block), at most
    :data:`_MAX_CYCLE_BLOCKS` (which bounds the small eigenproblem) and ``tokens // block_size``.
    As many heads of one batch element as fit share a group (groups balanced in size); when
    not even one fits, groups hold one head and its blocks shrink to the budget, but never below
    3 (the minimum for a cycle with a free restart). At 5%, ``block_size = head_dim = 64`` and
    float32 inputs the fraction binds from ``P ~ 13,000`` (below, the 32 MiB floor, i.e. more
    than 5%); at ``P = 17,550`` the budget is 61.6 MB and holds one head with 8 basis blocks
    (36 MB) plus workspace (estimated peak 59 MB).
    """
    want = max_passes + (2 if free_start else 1)
    blocks = max(3, min(want, _MAX_CYCLE_BLOCKS, tokens // block_size))
    budget_bytes = max(int(memory_fraction * tokens * tokens * 4), _MIN_BASIS_BYTES)

    def fits(group: int, blocks: int) -> bool:
        return _peak_bytes(group, blocks, block_size, tokens, extra_vectors) <= budget_bytes

    while blocks > 3 and not fits(1, blocks):
        blocks -= 1
    group = 1
    while group < heads and fits(group + 1, blocks):
        group += 1
    per_batch = -(-heads // group)
    group = -(-heads // per_batch)  # balance: groups differ by at most one head
    return KrylovPlan(
        group=group,
        groups=batch * per_batch,
        blocks=blocks,
        block_size=block_size,
        tokens=tokens,
        extra_vectors=extra_vectors,
        budget_bytes=budget_bytes,
    )


def _free_tolerance(*tensors: torch.Tensor) -> float:
    """Largest RMS mismatch (relative to the values' RMS) accepted between the site's output and
    a fresh float32 attention: ``eps`` of the least precise dtype, at least ``1e-4`` (a bfloat16
    forward's output differs by about ``0.05 eps``; another mask or scale by far more)."""
    eps = max(torch.finfo(tensor.dtype).eps for tensor in tensors)
    return max(_FREE_MIN_TOLERANCE, eps)


def _free_first_block(
    operator: "_DeflatedAttention",
    values: torch.Tensor,
    output: torch.Tensor,
    width: int,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First Krylov block and its image without an attention pass.

    With ``v`` the first ``width`` value columns (padded rows zeroed) and ``v = Q R`` (QR),
    ``B Q = (A v - 1 u^T v) R^{-1} = (z - 1 u^T v) R^{-1}`` because the site's output is
    ``z = A v``. Returns ``(Q, B Q, ok)`` with ``ok`` ``[group, 1]`` bool: the site's output
    matches a fresh float32 attention of ``v`` on :data:`_FREE_CHECK_ROWS` evenly spaced query
    rows within ``tolerance`` (RMS, relative to the RMS of ``v``; catches another mask, scale or
    token set), and ``R`` is well conditioned (``min |R_ii| > 1e-3 max |R_ii|``).
    """
    v = values[..., :width].float()
    z = output[..., :width].float()
    if operator.row_keep is not None:
        v = v * operator.row_keep
    tokens = v.shape[2]
    rows = torch.linspace(0, tokens - 1, min(tokens, _FREE_CHECK_ROWS), device=v.device)
    rows = rows.round().long().unique()
    fresh = F.scaled_dot_product_attention(
        operator.query[:, :, rows],
        operator.key,
        v,
        attn_mask=operator.attn_mask,
        scale=operator.scale,
    )
    mismatch = fresh - z[:, :, rows]
    if operator.row_keep is not None:
        mismatch = mismatch * operator.row_keep[:, :, rows]
    error = mismatch.square().mean(dim=(-2, -1)).sqrt()
    size = v.square().mean(dim=(-2, -1)).sqrt()
    q, r = _qr(v)
    diagonal = r.diagonal(dim1=-2, dim2=-1).abs()
    ok = (error <= tolerance * size) & (
        diagonal.amin(dim=-1) > _FREE_MIN_CONDITION * diagonal.amax(dim=-1)
    )
    if operator.row_weight is None or operator.row_keep is None:
        image = z - v.mean(dim=2, keepdim=True)
    else:
        image = (z - operator.row_weight.mT @ v) * operator.row_keep
    # X R = image  ->  X = image R^{-1}; a rejected block is discarded, so a singular R is harmless.
    image = torch.linalg.solve_triangular(r, image, upper=True, left=False)
    return q, image, ok


def _ritz_restart(
    rows: torch.Tensor,
    hess: torch.Tensor,
    theta: torch.Tensor,
    vectors: torch.Tensor,
    steps: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Restart block ``V_m Y`` from the ``width`` leading Ritz vectors and its image, for free.

    ``theta``, ``vectors``: the eigenpairs of the square part ``H_m`` (``m = steps`` blocks).
    ``Y`` is an orthonormal real basis of the leading Ritz vectors (real and imaginary parts of
    complex pairs); the Arnoldi relation ``B V_m = V_{m+1} H`` gives ``B V_m Y = V_{m+1} (H Y)``
    without an attention pass.
    """
    dim = steps * width
    order = theta.abs().argsort(dim=-1, descending=True)[..., :width]
    theta = theta.gather(-1, order)
    lead = vectors.gather(-1, order[..., None, :].expand(*vectors.shape[:-1], width))
    real_block = torch.where(theta[..., None, :].imag < 0, lead.imag, lead.real)
    combination = torch.linalg.qr(real_block)[0]  # [g, 1, dim, width] float64
    image_coeff = (hess[..., : dim + width, :dim] @ combination).to(rows.dtype)
    combination = combination.to(rows.dtype)
    start = rows[..., :dim, :].mT @ combination
    image = rows[..., : dim + width, :].mT @ image_coeff
    start, r = _qr(start)  # r = I up to rounding
    return start, torch.linalg.solve_triangular(r, image, upper=True, left=False)


def _ritz_residual(hess: torch.Tensor, top: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    """``||B x - theta x||`` of the unit Ritz vector of the Ritz value ``top`` ``[g, 1]``.

    The vector comes from two steps of inverse iteration on the square part ``H`` (an LU
    solve, far cheaper than a second eigendecomposition); then
    ``||B V y - theta V y|| = ||H_{j+1,j} y_j||`` (``V`` orthonormal, ``y`` unit).
    """
    shifted = hess[..., :dim, :dim].to(torch.complex128)
    shift = top + 1e-10 * (1 + top.abs())  # off the exact eigenvalue, so LU stays finite
    shifted.diagonal(dim1=-2, dim2=-1).sub_(shift[..., None])
    lu, pivots, _ = torch.linalg.lu_factor_ex(shifted)
    del shifted
    vector = torch.ones(*lu.shape[:-1], 1, dtype=lu.dtype, device=lu.device)
    for _ in range(2):
        vector = torch.linalg.lu_solve(lu, pivots, vector)
        vector = vector / torch.linalg.vector_norm(vector, dim=-2, keepdim=True)
    tail = hess[..., dim : dim + width, dim - width : dim].to(lu.dtype)
    residual = torch.linalg.vector_norm(tail @ vector[..., dim - width :, :], dim=(-2, -1))
    return torch.nan_to_num(residual, nan=math.inf)


def _ritz_arnoldi(
    operator: "_DeflatedAttention",
    seed: list[torch.Tensor | None],
    *,
    blocks: int,
    tol: float,
    max_passes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Block Arnoldi on one group, stopped on the change of the dominant Ritz modulus.

    ``seed`` is ``[start, image]``, emptied here so that no caller keeps the blocks alive:
    ``start`` ``[g, 1, tokens, width]`` is orthonormal and ``image`` is ``B start`` when known
    (free first block) or None. After every block step the Ritz values of the square part of
    ``H`` are computed (float64). After every step that cost an attention pass, the top Ritz
    modulus ``theta_n`` gives the change ``d_n = |theta_n - theta_{n-1}|`` over that pass and
    an estimate of the error left, :func:`_remaining_error`; the group stops once every pair's
    estimate is at most ``tol``, or after ``max_passes`` passes. When the basis holds
    ``blocks`` blocks it restarts from the leading Ritz vectors (no pass, see
    :func:`_ritz_restart`); the first change after a restart is not extrapolated (the restart
    slows convergence for a pass or two, so the ratio would look small). Returns
    ``(modulus, residual, change, error_estimate, restarts)`` with ``[g, 1]`` tensors.
    """
    start, image = seed.pop(0), seed.pop(0)
    assert start is not None
    width = start.shape[-1]
    steps = blocks - 1
    rows = start.new_empty(*start.shape[:2], blocks * width, start.shape[2])
    hess = torch.zeros(
        *start.shape[:2], blocks * width, steps * width, dtype=torch.float64, device=start.device
    )
    rows[..., :width, :] = start.mT
    change = torch.full(start.shape[:2], math.inf, dtype=torch.float64, device=start.device)
    del start
    estimate = change
    last_change: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    restarts = 0
    j = 0
    while True:
        counted = image is None
        if image is None:
            image = operator(rows[..., j * width : (j + 1) * width, :].mT)
        q, coeff, r = _orthonormalise(image, rows[..., : (j + 1) * width, :], generator)
        image = None
        cols = slice(j * width, (j + 1) * width)
        rows[..., (j + 1) * width : (j + 2) * width, :] = q.mT
        del q
        hess[..., : (j + 1) * width, cols] = coeff.double()
        hess[..., (j + 1) * width : (j + 2) * width, cols] = r.double()
        j += 1
        dim = j * width
        vectors = None
        if j == steps:  # the restart, if any, needs the Ritz vectors too
            ritz, vectors = torch.linalg.eig(hess[..., :dim, :dim])
        else:
            ritz = torch.linalg.eigvals(hess[..., :dim, :dim])
        top = ritz.gather(-1, ritz.abs().argmax(dim=-1, keepdim=True))[..., 0]
        theta = top.abs()
        compared = counted and previous is not None
        if compared:
            assert previous is not None
            change = (theta - previous).abs()
            estimate = _remaining_error(change, last_change)
            last_change = change
        previous = theta
        # One host synchronisation per block step: the stop decision.
        if compared and bool((estimate <= tol).all()):
            break
        if operator.passes >= max_passes:
            break
        if j == steps:
            assert vectors is not None
            start, image = _ritz_restart(rows, hess, ritz, vectors, j, width)
            rows[..., :width, :] = start.mT
            del start
            hess.zero_()
            restarts += 1
            j = 0
            # A restart slows convergence for a pass or two: no ratio across it.
            last_change = None

    residual = _ritz_residual(hess, top, j * width, width)
    return theta, residual, change, estimate, restarts


def _remaining_error(change: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """Estimated error of the dominant Ritz modulus after a pass that changed it by ``change``.

    With the change ``last`` of the pass before, the ratio ``rho = change / last`` extrapolates
    geometric convergence: the error left is ``change * rho / (1 - rho)``, capped at
    ``10 * change`` (also for ``rho >= 1``: changes at rounding level that do not shrink).
    Without ``last`` (first comparison) the estimate is ``change`` itself (``rho = 1/2``). So
    fast convergence stops a pass earlier than a plain ``change <= tol`` rule and slow
    convergence (``rho > 1/2``) later, more accurately.
    """
    if last is None:
        return change
    ratio = change / last.clamp_min(torch.finfo(last.dtype).tiny)
    factor = torch.where(ratio < 1, ratio / (1 - ratio).clamp_min(1e-12), math.inf)
    return torch.where(change > 0, change * factor.clamp_max(_MAX_ERROR_FACTOR), 0.0)


def _ritz_solver(
    query: torch.Tensor,
    key: torch.Tensor,
    values: torch.Tensor | None,
    output: torch.Tensor | None,
    scale: float,
    valid: torch.Tensor | None,
    *,
    block_size: int,
    tol: float,
    max_passes: int,
    memory_fraction: float,
    query_chunk: int | None,
    generator: torch.Generator | None,
) -> Lambda2Estimate:
    """``stop="ritz"``: heads in groups (:func:`krylov_plan`), each group by
    :func:`_ritz_arnoldi` from the free first block when the site's output allows it."""
    batch, heads, tokens, head_dim = query.shape
    device = query.device
    use_free = values is not None and output is not None and values.shape[-1] >= block_size
    copies = query.dtype != torch.float32 or key.dtype != torch.float32
    plan = krylov_plan(
        heads,
        tokens,
        block_size,
        batch=batch,
        extra_vectors=2 * head_dim if copies else 0,
        max_passes=max_passes,
        memory_fraction=memory_fraction,
        free_start=use_free,
    )
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    tolerance = _free_tolerance(query, key, values, output) if use_free else 0.0
    modulus = torch.empty(batch, heads, dtype=torch.float64, device=device)
    residual = torch.empty_like(modulus)
    change = torch.empty_like(modulus)
    remaining = torch.empty_like(modulus)
    passes = torch.empty(batch, heads, dtype=torch.int64, device=device)
    free = torch.zeros(batch, heads, dtype=torch.bool, device=device)
    chunk = query_chunk or max(1, _AUTO_CHUNK_SCORE_BYTES // (plan.group * tokens * 4))
    most_passes = most_restarts = 0
    for b in range(batch):
        for first in range(0, heads, plan.group):
            h = slice(first, min(first + plan.group, heads))
            group = h.stop - h.start
            # The group's heads as a batch of single-head chains, [g, 1, tokens, d] views.
            operator = _DeflatedAttention(
                query[b, h, None],
                key[b, h, None],
                scale,
                None if valid is None else valid[b].expand(group, tokens),
                min(chunk, tokens),
            )
            seed: list[torch.Tensor | None] = []
            if use_free:
                assert values is not None and output is not None
                start, image, ok = _free_first_block(
                    operator, values[b, h, None], output[b, h, None], block_size, tolerance
                )
                if bool(ok.all()):  # one host synchronisation per group
                    free[b, h] = True
                    seed = [start, image]
                del start, image
            if not seed:
                start = torch.randn(
                    (group, 1, tokens, block_size), generator=generator, device=generator.device
                ).to(device)
                seed = [_qr(start)[0], None]
                del start
            found, error, moved, left, restarts = _ritz_arnoldi(
                operator,
                seed,
                blocks=plan.blocks,
                tol=tol,
                max_passes=max_passes,
                generator=generator,
            )
            modulus[b, h], residual[b, h] = found[:, 0], error[:, 0]
            change[b, h], remaining[b, h] = moved[:, 0], left[:, 0]
            passes[b, h] = operator.passes
            most_passes = max(most_passes, operator.passes)
            most_restarts = max(most_restarts, restarts)

    # |lambda2| <= 1 for a stochastic matrix, but Ritz values of the non-normal B can exceed it
    # (nearly decomposable chains, A ~ I): such estimates are certainly too large.
    return Lambda2Estimate(
        modulus=modulus.clamp(max=1.0).float(),
        residual=residual.float(),
        converged=remaining <= tol,
        attention_passes=most_passes,
        restarts=most_restarts,
        block_size=block_size,
        krylov_dim=plan.blocks - 1,
        stop="ritz",
        change=change.float(),
        error_estimate=remaining.float(),
        passes=passes,
        free_start=free,
        groups=plan.groups,
        basis_bytes=plan.basis_bytes,
    )
