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
spectral radius of ``B``. That radius is found with a block Arnoldi method with explicit
restarts, batched over (batch, heads): every attention sweep multiplies a whole block of
``block_size`` vectors, which costs about as much as a single vector because the ``q k^T`` and
``exp`` work is shared across value columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F

__all__ = ["Lambda2Estimate", "second_eigenvalue_magnitude"]

# Upper bound, in bytes, on one query chunk's float32 score block (batch * heads * chunk *
# tokens * 4) when ``query_chunk`` is left to be chosen automatically. Fused SDPA kernels never
# allocate that block; the math fallback does, so this caps the extra memory of every backend.
_AUTO_CHUNK_SCORE_BYTES = 256 * 2**20


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
    """

    modulus: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    attention_passes: int
    restarts: int
    block_size: int
    krylov_dim: int


@overload
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float | None = ...,
    key_padding_mask: torch.Tensor | None = ...,
    method: Literal["krylov", "dense"] = ...,
    krylov_dim: int = ...,
    block_size: int | None = ...,
    max_restarts: int = ...,
    tol: float = ...,
    query_chunk: int | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float | None = ...,
    key_padding_mask: torch.Tensor | None = ...,
    method: Literal["krylov", "dense"] = ...,
    krylov_dim: int = ...,
    block_size: int | None = ...,
    max_restarts: int = ...,
    tol: float = ...,
    query_chunk: int | None = ...,
    generator: torch.Generator | None = ...,
    return_info: Literal[True],
) -> Lambda2Estimate: ...


@torch.no_grad()
def second_eigenvalue_magnitude(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    method: Literal["krylov", "dense"] = "krylov",
    krylov_dim: int = 4,
    block_size: int | None = None,
    max_restarts: int = 40,
    tol: float = 1e-5,
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
        scale: multiplier of the dot products; default ``1 / sqrt(head_dim)``.
        key_padding_mask: optional bool ``[batch, tokens]``, True for valid tokens. Padded tokens
            are removed from the chain entirely (as rows and as columns); every batch element
            needs at least 2 valid tokens.
        method: ``"krylov"`` (matrix free, default) or ``"dense"`` (forms ``A`` in float64 and
            calls :func:`torch.linalg.eigvals`; an oracle for small ``tokens``).
        krylov_dim: block Krylov steps per restart cycle, i.e. attention passes per cycle;
            at least 2, since a restart keeps ``block_size`` Ritz vectors of the cycle's
            ``krylov_dim * block_size``-dimensional subspace. Clipped so the basis
            (``(krylov_dim + 1) * block_size`` vectors) fits in ``tokens``.
        block_size: vectors multiplied per attention pass (the value width). Default
            ``head_dim``: fused SDPA kernels (e.g. the CPU flash kernel) require the value width
            to equal ``head_dim``, and extra value columns cost little next to ``q k^T``.
            Clipped to ``tokens // 3``.
        max_restarts: restarts after the first cycle; at most
            ``(max_restarts + 1) * krylov_dim`` attention passes are used.
        tol: stop once every (batch, head) has a dominant Ritz pair with residual norm
            ``||B x - theta x|| <= tol`` (``x`` unit norm). Float32 attention limits useful
            values to about ``1e-6``.
        query_chunk: query rows per SDPA call. Extra memory is
            ``O(batch * heads * query_chunk * tokens)`` float32 on backends that materialise
            scores, plus the Krylov basis (``batch * heads * tokens * (krylov_dim + 1) *
            block_size`` float32). Default: the largest chunk whose score block is at most
            256 MiB.
        generator: source of the random start block; default a fresh generator seeded with 0
            on the query's device, so results are reproducible.
        return_info: also return convergence data and the number of passes.

    Returns:
        ``[batch, heads]`` float32 tensor of ``|lambda2|`` on the query's device, or a
        :class:`Lambda2Estimate` when ``return_info`` is True. For converged heads (see
        ``Lambda2Estimate.converged``) the error is typically below ``tol``; the residual bounds
        it exactly only for normal matrices, and attention is not normal, so ill-conditioned
        eigenvalues can be less accurate.

    Raises:
        TypeError: if ``query``, ``key`` or ``key_padding_mask`` is not a tensor.
        ValueError: for malformed shapes, dtypes, devices or parameters.
    """
    batch, heads, tokens, head_dim = _check_qk(query, key)
    valid = _check_mask(key_padding_mask, batch, tokens, query.device)
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
        ):
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                expected = f"an int >= {low}" + (" or None" if optional else "")
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if tokens < 3:
            raise ValueError(
                f"method='krylov' needs tokens >= 3, got {tokens}; use method='dense'"
            )
        if query_chunk is None:
            query_chunk = max(
                1, _AUTO_CHUNK_SCORE_BYTES // (batch * heads * tokens * 4)
            )
        operator = _DeflatedAttention(
            query, key, scale, valid, min(query_chunk, tokens)
        )
        estimate = _block_arnoldi(
            operator,
            block_size=min(head_dim if block_size is None else block_size, tokens // 3),
            krylov_dim=krylov_dim,
            max_restarts=max_restarts,
            tol=tol,
            generator=generator,
        )
    else:
        raise ValueError(f"method must be 'krylov' or 'dense', got {method!r}")
    return estimate if return_info else estimate.modulus


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
        mean = (block * self.row_weight).sum(dim=2, keepdim=True)
        return out.sub_(mean).mul_(self.row_keep)


def _orthonormalise(
    block: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormalise the columns of ``block`` (overwritten) against the orthonormal ``rows``.

    ``block`` is ``[..., tokens, width]`` and ``rows`` ``[..., n, tokens]`` (the basis stored as
    rows, so leading slices of it are used in place, without copies). Returns
    ``(q, coeff, r)`` with ``block = rows^T coeff + q r`` where ``q`` ``[..., tokens, width]``
    has orthonormal columns orthogonal to ``rows``. Classical Gram-Schmidt twice, a QR, then one
    more projection and QR so that QR's completion columns for a rank-deficient block are
    orthogonal to ``rows`` too.
    """
    coeff = rows @ block
    block.sub_(rows.mT @ coeff)
    second = rows @ block
    block.sub_(rows.mT @ second)
    q, r = torch.linalg.qr(block)
    third = rows @ q
    q, r_fix = torch.linalg.qr(q.sub_(rows.mT @ third))
    # block = q_old r with q_old = q r_fix + rows^T third.
    return q, coeff + second + third @ r, r_fix @ r


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
    start = torch.linalg.qr(start)[0]  # [b, h, t, p]

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
            q, coeff, r = _orthonormalise(image, rows[..., : (j + 1) * p, :])
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
        start = torch.linalg.qr(rows[..., :dim, :].mT @ combination)[0]
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
