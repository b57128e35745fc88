"""Separation scores for "motion heads": how well latent frames separate in a head's output space.

Each latent frame is treated as a cluster of its ``h*w`` visual attention-output vectors ``o_x``
(per head, per layer, per denoising step; see docs/methods.md, "Separation scores").
Every function here scores **all batch rows and heads at once**, on the tensor's own device.

Input convention (all functions)
--------------------------------
``outputs``: floating tensor of shape ``[batch, heads, frames, tokens_per_frame, head_dim]``
(``B, H, F, T, d``). Cluster ``f`` is ``outputs[b, h, f]`` (``T`` points in ``R^d``), so every
cluster has the same size ``T`` and there are ``N = F * T`` points per (batch, head). When a
flattened point index is needed (silhouette sub-sampling) it is frame-major: point ``i`` is
token ``i % T`` of frame ``i // T``, i.e. row ``i`` of ``outputs[b, h].reshape(F * T, d)``.

Output convention
-----------------
A ``float32`` tensor of shape ``[batch, heads]`` on ``outputs.device``. Scores are unit-free
(ratios of squared distances for CHI/Fisher, of distances for Davies-Bouldin; silhouette is in
``[-1, 1]``).

Numerics
--------
Internally every score is computed in ``compute_dtype``: by default ``float64`` for ``float64``
input and ``float32`` otherwise (``bfloat16``/``float16`` are never used for accumulation). The
within-frame sums of squares are *centred* (frame means subtracted before squaring; the global
mean is subtracted first so a large common offset does not cost precision), and the small
per-frame statistics are combined in ``float64``. Memory: about one ``compute_dtype`` copy of
``outputs`` (CHI / Fisher / Davies-Bouldin) and ``(B*H) * chunk_size * sample_size`` distances
(silhouette).

Scores (``K = F`` clusters, ``n_f`` points in cluster ``f``, ``mu_f`` its mean, ``mu`` the mean of
all ``N`` points):

* ``tr(B) = sum_f n_f ||mu_f - mu||^2``          (between-frame dispersion)
* ``tr(W) = sum_f sum_{x in f} ||x - mu_f||^2``   (within-frame dispersion)
* Calinski-Harabasz  ``CHI = (tr(B) / (F - 1)) / (tr(W) / (N - F))``          higher = better
* Fisher ratio       ``tr(S_b) / tr(S_w) = tr(B) / tr(W) = CHI * (F-1)/(N-F)``  higher = better
* Davies-Bouldin     ``mean_i max_{j != i} (s_i + s_j) / ||mu_i - mu_j||``      lower = better
* Silhouette         mean over (sub-sampled) points of ``(b - a) / max(a, b)``  higher = better

Each agrees with scikit-learn (``calinski_harabasz_score``, ``davies_bouldin_score``,
``silhouette_score``) applied to one ``(b, h)`` slice, including scikit-learn's conventions for
degenerate inputs (documented per function).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Union

import numpy as np
import torch

from vidinterp.kernels.transfer import to_device

__all__ = [
    "calinski_harabasz",
    "davies_bouldin",
    "fisher_ratio",
    "silhouette",
    "silhouette_sample_indices",
    "separation_score",
    "SEPARATION_SCORES",
    "HIGHER_IS_BETTER",
    "higher_is_better",
    "DEFAULT_SILHOUETTE_SAMPLE_SIZE",
]

#: Default number of points the silhouette is computed on (per call, shared by all heads).
DEFAULT_SILHOUETTE_SAMPLE_SIZE = 2048

SeedLike = Union[int, None, torch.Generator, np.random.Generator, np.random.RandomState]

_SHAPE_DOC = "[batch, heads, frames, tokens_per_frame, head_dim]"


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_outputs(outputs: Any, func: str, *, min_tokens: int = 2) -> tuple[int, int, int, int, int]:
    """Validate ``outputs`` and return its shape ``(B, H, F, T, d)``."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"{func}: expected `outputs` to be a torch.Tensor of shape {_SHAPE_DOC}, "
                        f"got {type(outputs).__name__}")
    if outputs.ndim != 5:
        raise ValueError(f"{func}: expected `outputs` with 5 dims {_SHAPE_DOC}, got {outputs.ndim} "
                         f"dims with shape {tuple(outputs.shape)}")
    if not outputs.is_floating_point():
        raise TypeError(f"{func}: expected a floating-point `outputs` tensor, got dtype {outputs.dtype}")
    B, H, F, T, d = outputs.shape
    if B < 1 or H < 1 or d < 1:
        raise ValueError(f"{func}: batch, heads and head_dim must be >= 1, got shape "
                         f"{tuple(outputs.shape)} {_SHAPE_DOC}")
    if F < 2:
        raise ValueError(f"{func}: need at least 2 frames (clusters) to score separation, got "
                         f"frames={F} (shape {tuple(outputs.shape)} {_SHAPE_DOC})")
    if T < min_tokens:
        raise ValueError(f"{func}: need at least {min_tokens} tokens per frame, got "
                         f"tokens_per_frame={T} (shape {tuple(outputs.shape)} {_SHAPE_DOC}); "
                         f"scikit-learn requires 2 <= n_clusters <= n_points - 1")
    return B, H, F, T, d


def _resolve_compute_dtype(input_dtype: torch.dtype, compute_dtype: torch.dtype | None,
                           func: str) -> torch.dtype:
    if compute_dtype is None:
        return torch.float64 if input_dtype == torch.float64 else torch.float32
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{func}: compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
    return compute_dtype


# --------------------------------------------------------------------------------------------
# per-frame statistics (shared by CHI, Fisher, Davies-Bouldin)
# --------------------------------------------------------------------------------------------


def _frame_statistics(outputs: torch.Tensor, cdtype: torch.dtype, *, with_mean_dist: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-frame means and centred sums of squares of a ``[B, H, F, T, d]`` tensor.

    Returns ``(means [B,H,F,d] float64, m2 [B,H,F] float64, mean_dist [B,H,F] float64 | None)``
    where ``m2[b,h,f] = sum_t ||x_t - mu_f||^2`` and ``mean_dist[b,h,f] = mean_t ||x_t - mu_f||``.
    Reductions run in ``cdtype``; the global mean is removed first (shifted data) so a large
    common offset does not limit the precision of the frame means or their differences.
    """
    shift = outputs.mean(dim=(2, 3), keepdim=True, dtype=cdtype)            # [B,H,1,1,d]
    xc = outputs.to(cdtype) - shift                                          # one cdtype copy
    rel_means = xc.mean(dim=3, keepdim=True)                                 # [B,H,F,1,d]
    xc.sub_(rel_means)                                                       # centred per frame
    norms = torch.linalg.vector_norm(xc, dim=-1)                             # [B,H,F,T]
    del xc
    m2 = norms.square().sum(dim=-1).to(torch.float64)                        # [B,H,F]
    mean_dist = norms.mean(dim=-1).to(torch.float64) if with_mean_dist else None
    means = shift.squeeze(3).to(torch.float64) + rel_means.squeeze(3).to(torch.float64)
    return means, m2, mean_dist


def _traces(counts: torch.Tensor, means: torch.Tensor, m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tr(B), tr(W))``, each ``[B, H]`` float64, from per-frame counts ``[F]`` (float64, same
    device), means ``[B,H,F,d]`` and centred sums of squares ``[B,H,F]`` (float64)."""
    total = counts.sum()
    grand = (means * counts[:, None]).sum(dim=-2, keepdim=True) / total     # [B,H,1,d]
    tr_b = ((means - grand).square().sum(dim=-1) * counts).sum(dim=-1)       # [B,H]
    tr_w = m2.sum(dim=-1)                                                    # [B,H]
    return tr_b, tr_w


def _chi_from_traces(tr_b: torch.Tensor, tr_w: torch.Tensor, n_points: float, n_frames: int) -> torch.Tensor:
    # scikit-learn returns 1.0 when the within-cluster dispersion is exactly zero.
    chi = tr_b * (n_points - n_frames) / (tr_w * (n_frames - 1.0))
    return torch.where(tr_w == 0, torch.ones_like(chi), chi).to(torch.float32)


# --------------------------------------------------------------------------------------------
# one-shot scores
# --------------------------------------------------------------------------------------------


def calinski_harabasz(outputs: torch.Tensor, *, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Calinski-Harabasz index of the frame clusters, for every (batch, head).

    ``CHI = (tr(B) / (F - 1)) / (tr(W) / (N - F))`` with ``N = F * T``,
    ``tr(B) = sum_f T ||mu_f - mu||^2`` and ``tr(W) = sum_f sum_t ||x_{f,t} - mu_f||^2``.
    Higher = frames more separated. O(N d) work, no pairwise distances.

    Args:
        outputs: ``[batch, heads, frames, tokens_per_frame, head_dim]`` floating tensor
            (any float dtype; bf16/fp16 are accumulated in float32). Needs ``frames >= 2`` and
            ``tokens_per_frame >= 2``.
        compute_dtype: accumulation dtype (float32 or float64); default float64 for float64
            input, else float32. Per-frame statistics are always combined in float64.

    Returns:
        ``[batch, heads]`` float32 tensor on ``outputs.device``. As in scikit-learn, a head
        whose within-frame dispersion is exactly zero scores ``1.0``.
    """
    B, H, F, T, d = _check_outputs(outputs, "calinski_harabasz")
    cdtype = _resolve_compute_dtype(outputs.dtype, compute_dtype, "calinski_harabasz")
    means, m2, _ = _frame_statistics(outputs, cdtype)
    counts = torch.full((F,), float(T), dtype=torch.float64, device=outputs.device)
    tr_b, tr_w = _traces(counts, means, m2)
    return _chi_from_traces(tr_b, tr_w, float(F * T), F)


def fisher_ratio(outputs: torch.Tensor, *, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Fisher ratio ``tr(S_b) / tr(S_w)`` of the frame clusters, for every (batch, head).

    Exact definition (``n_f = T`` points in frame ``f``, ``mu_f`` frame mean, ``mu`` mean of all
    ``N = F*T`` points)::

        S_b = sum_f n_f (mu_f - mu)(mu_f - mu)^T                 # cluster-size weighted
        S_w = sum_f sum_{x in f} (x - mu_f)(x - mu_f)^T          # total within scatter
        fisher = tr(S_b) / tr(S_w)

    Both scatters are unnormalised sums, so ``fisher = CHI * (F - 1) / (N - F)``: for a fixed
    frame geometry (same ``F`` and ``T``) it ranks heads exactly like CHI. Higher = better.

    Args:
        outputs: ``[batch, heads, frames, tokens_per_frame, head_dim]`` floating tensor
            (``frames >= 2``, ``tokens_per_frame >= 2``).
        compute_dtype: accumulation dtype, as in :func:`calinski_harabasz`.

    Returns:
        ``[batch, heads]`` float32 tensor. IEEE semantics when ``tr(S_w) == 0``: ``inf`` if the
        frame means differ, ``nan`` if all points coincide.
    """
    B, H, F, T, d = _check_outputs(outputs, "fisher_ratio")
    cdtype = _resolve_compute_dtype(outputs.dtype, compute_dtype, "fisher_ratio")
    means, m2, _ = _frame_statistics(outputs, cdtype)
    counts = torch.full((F,), float(T), dtype=torch.float64, device=outputs.device)
    tr_b, tr_w = _traces(counts, means, m2)
    return (tr_b / tr_w).to(torch.float32)


def davies_bouldin(outputs: torch.Tensor, *, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Davies-Bouldin index of the frame clusters, for every (batch, head). Lower = better.

    ``DB = (1/F) sum_i max_{j != i} (s_i + s_j) / ||mu_i - mu_j||`` where
    ``s_i = mean_t ||x_{i,t} - mu_i||`` is the mean euclidean distance of frame ``i``'s points
    to its centroid (scikit-learn's definition). O(N d + F^2 d) work.

    Degenerate cases follow ``sklearn.metrics.davies_bouldin_score``: the score is ``0.0`` when
    all ``s_i`` are ~0 or all centroid distances are ~0 (``|value| <= 1e-8``), and a pair of
    frames with identical centroids (distance exactly 0) is ignored in the max.

    Args:
        outputs: ``[batch, heads, frames, tokens_per_frame, head_dim]`` floating tensor
            (``frames >= 2``, ``tokens_per_frame >= 2``).
        compute_dtype: accumulation dtype, as in :func:`calinski_harabasz`.

    Returns:
        ``[batch, heads]`` float32 tensor (unit-free, ``>= 0``).
    """
    B, H, F, T, d = _check_outputs(outputs, "davies_bouldin")
    cdtype = _resolve_compute_dtype(outputs.dtype, compute_dtype, "davies_bouldin")
    means, _, s = _frame_statistics(outputs, cdtype, with_mean_dist=True)     # float64
    assert s is not None
    # Direct (difference-based) distances between the F centroids, in float64: exact zeros on
    # the diagonal and for coincident centroids.
    cdist = torch.cdist(means.reshape(B * H, F, d), means.reshape(B * H, F, d),
                        compute_mode="donot_use_mm_for_euclid_dist").reshape(B, H, F, F)
    atol = 1e-8  # numpy.isclose(x, 0) default, as used by scikit-learn
    degenerate = (s.abs() <= atol).all(dim=-1) | (cdist.abs() <= atol).flatten(-2).all(dim=-1)
    cdist = torch.where(cdist == 0, torch.full_like(cdist, float("inf")), cdist)
    combined = s[..., :, None] + s[..., None, :]                              # [B,H,F,F]
    db = (combined / cdist).amax(dim=-1).mean(dim=-1)
    return torch.where(degenerate, torch.zeros_like(db), db).to(torch.float32)


# --------------------------------------------------------------------------------------------
# silhouette
# --------------------------------------------------------------------------------------------


def silhouette_sample_indices(num_points: int, sample_size: int | None,
                              generator_or_seed: SeedLike = 0) -> torch.Tensor:
    """Indices of a uniform random subsample (without replacement) of ``num_points`` points.

    Args:
        num_points: ``N = frames * tokens_per_frame``.
        sample_size: number of points to keep; ``None`` keeps all points in order. Values
            ``>= num_points`` keep all points (in random order, like scikit-learn).
        generator_or_seed: an ``int`` or ``None`` (``numpy.random.RandomState(seed)``; ``None``
            draws fresh entropy), a ``numpy.random.RandomState``/``numpy.random.Generator``, or a
            ``torch.Generator`` (CPU). With an ``int`` or a ``RandomState`` the subsample is the
            one ``sklearn.metrics.silhouette_score(..., sample_size=sample_size,
            random_state=seed)`` draws: ``RandomState(seed).permutation(N)[:sample_size]``.

    Returns:
        1-D int64 CPU tensor of frame-major point indices in ``[0, num_points)``.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 1:
        raise ValueError(f"silhouette_sample_indices: num_points must be a positive int, got {num_points!r}")
    num_points = int(num_points)
    if sample_size is None:
        return torch.arange(num_points, dtype=torch.int64)
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ValueError(f"silhouette_sample_indices: sample_size must be a positive int or None, "
                         f"got {sample_size!r}")
    g = generator_or_seed
    if isinstance(g, torch.Generator):
        perm = torch.randperm(num_points, generator=g, device=g.device).cpu()
        return perm[: int(sample_size)].to(torch.int64)
    if g is None or isinstance(g, (int, np.integer)) and not isinstance(g, bool):
        g = np.random.RandomState(g)
    if isinstance(g, (np.random.RandomState, np.random.Generator)):
        perm = g.permutation(num_points)[: int(sample_size)]
        return torch.from_numpy(np.ascontiguousarray(perm, dtype=np.int64))
    raise TypeError(f"silhouette_sample_indices: generator_or_seed must be an int, None, a "
                    f"torch.Generator or a numpy RandomState/Generator, got {type(generator_or_seed).__name__}")


def _euclidean_distances(rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``[..., r, s]`` euclidean distances between ``rows`` ``[..., r, d]`` and ``points``
    ``[..., s, d]``, in ``rows``' dtype. Squared norms and the product are formed in float64,
    so the ``|x|^2 + |y|^2 - 2xy`` cancellation loses nothing at float32 precision (a
    difference-based ``torch.cdist`` is about 4x slower on CPU)."""
    rows64, points64 = rows.double(), points.double()
    squared = (rows64.square().sum(-1, keepdim=True) + points64.square().sum(-1).unsqueeze(-2)
               - 2.0 * rows64 @ points64.mT)
    return squared.clamp_min_(0.0).sqrt_().to(rows.dtype)


def silhouette(
    outputs: torch.Tensor,
    *,
    sample_size: int | None = DEFAULT_SILHOUETTE_SAMPLE_SIZE,
    generator_or_seed: SeedLike = 0,
    sample_indices: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    chunk_size: int = 256,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean euclidean silhouette of the frame clusters on a point subsample, for every (batch, head).

    One subsample of point indices (frame-major, see the module docstring) is drawn per call and
    shared by every batch row and head. For each (b, h) the result equals
    ``sklearn.metrics.silhouette_score(X[idx], labels[idx])`` with
    ``X = outputs[b, h].reshape(F*T, d)`` and ``labels = arange(F).repeat_interleave(T)``:
    per point ``a`` = mean distance to the other subsampled points of its frame, ``b`` = smallest
    mean distance to the subsampled points of another frame, ``s = (b - a) / max(a, b)``;
    ``s = 0`` for a point alone in its frame (and for ``a = b = 0``); frames absent from the
    subsample play no part. Higher = better, in ``[-1, 1]``.

    Cost O(S^2 d) per head for ``S`` subsampled points, as matrix products
    (:func:`_euclidean_distances`: ``|x|^2 + |y|^2 - 2xy`` in float64, whose cancellation error
    stays far below float32 rounding) in blocks of ``chunk_size`` query rows, so peak extra
    memory is about ``B*H*chunk_size*S`` float64 values.

    Args:
        outputs: ``[batch, heads, frames, tokens_per_frame, head_dim]`` floating tensor.
        sample_size: points to subsample (without replacement, uniformly over all ``F*T``
            points); ``None`` uses all points. Ignored when ``sample_indices`` is given.
        generator_or_seed: randomness for the subsample; see :func:`silhouette_sample_indices`
            (an ``int`` reproduces ``silhouette_score(..., sample_size, random_state=seed)``).
        sample_indices: explicit 1-D integer point indices in ``[0, F*T)`` (repeats allowed, then
            treated as distinct points exactly as scikit-learn would).
        chunk_size: query rows per block of pairwise distances.
        compute_dtype: accumulation dtype, as in :func:`calinski_harabasz`.

    Returns:
        ``[batch, heads]`` float32 tensor on ``outputs.device``.

    Raises:
        ValueError: if the subsample covers fewer than 2 frames, or as many frames as points
            (scikit-learn's ``2 <= n_labels <= n_samples - 1``).
    """
    B, H, F, T, d = _check_outputs(outputs, "silhouette", min_tokens=1)
    cdtype = _resolve_compute_dtype(outputs.dtype, compute_dtype, "silhouette")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"silhouette: chunk_size must be a positive int, got {chunk_size!r}")
    N = F * T
    if sample_indices is None:
        idx = silhouette_sample_indices(N, sample_size, generator_or_seed)
    else:
        idx = torch.as_tensor(np.asarray(sample_indices) if not isinstance(sample_indices, torch.Tensor)
                              else sample_indices).detach().cpu()
        if idx.ndim != 1 or idx.dtype in (torch.bool,) or idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"silhouette: sample_indices must be a 1-D integer array, got dtype "
                             f"{idx.dtype} and shape {tuple(idx.shape)}")
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
            raise ValueError(f"silhouette: sample_indices must lie in [0, {N}) (frames*tokens_per_frame = "
                             f"{F}*{T}), got range [{int(idx.min())}, {int(idx.max())}]")
    S = int(idx.numel())
    frame_of = idx // T
    present, own = torch.unique(frame_of, return_inverse=True)               # own: [S] in [0, K)
    K = int(present.numel())
    if not 1 < K < S:
        raise ValueError(f"silhouette: the subsample of {S} points covers {K} distinct frames; need "
                         f"2 <= frames <= points - 1 (= {S - 1}). Use a larger sample_size "
                         f"(frames={F}, tokens_per_frame={T}).")
    counts = torch.bincount(own, minlength=K).to(cdtype)                     # [K]

    device = outputs.device
    # the subsample is drawn on the host; its copies are queued without a host wait (to_device)
    f_dev, t_dev = to_device(frame_of, device), to_device(idx % T, device)
    X = outputs[:, :, f_dev, t_dev, :].to(cdtype).reshape(B * H, S, d)       # [BH, S, d]
    own_dev = to_device(own, device)
    counts_dev = to_device(counts, device)
    onehot = torch.nn.functional.one_hot(own_dev, K).to(cdtype)              # [S, K]
    own_counts = counts_dev[own_dev]                                          # [S]

    total = torch.zeros(B * H, dtype=torch.float64, device=device)
    for start in range(0, S, int(chunk_size)):
        stop = min(start + int(chunk_size), S)
        dist = _euclidean_distances(X[:, start:stop], X)                      # [BH, c, S]
        sums = dist @ onehot                                                  # [BH, c, K]
        lab = own_dev[start:stop].expand(B * H, -1).unsqueeze(-1)            # [BH, c, 1]
        intra = sums.gather(-1, lab).squeeze(-1)                              # [BH, c]
        n_own = own_counts[start:stop]
        a = intra / (n_own - 1).clamp_min(1)
        inter = (sums / counts_dev).scatter(-1, lab, float("inf"))
        b = inter.amin(dim=-1)
        s = (b - a) / torch.maximum(a, b)
        s = torch.where(n_own > 1, torch.nan_to_num(s, nan=0.0), torch.zeros_like(s))
        total += s.sum(dim=-1, dtype=torch.float64)
    return (total / S).reshape(B, H).to(torch.float32)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

#: Score name -> function ``(outputs [B,H,F,T,d], **kwargs) -> [B,H] float32``.
SEPARATION_SCORES: Mapping[str, Callable[..., torch.Tensor]] = MappingProxyType({
    "chi": calinski_harabasz,
    "davies_bouldin": davies_bouldin,
    "silhouette": silhouette,
    "fisher": fisher_ratio,
})

#: Score name -> whether a larger value means better-separated frames (Davies-Bouldin: False).
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType({
    "chi": True,
    "davies_bouldin": False,
    "silhouette": True,
    "fisher": True,
})
#: Alias of :data:`HIGHER_IS_BETTER`.
higher_is_better = HIGHER_IS_BETTER


def separation_score(outputs: torch.Tensor, name: str = "chi", **kwargs: Any) -> torch.Tensor:
    """Dispatch to ``SEPARATION_SCORES[name](outputs, **kwargs)``; ``[batch, heads]`` float32.

    To rank heads "best first" regardless of the score, negate when
    ``not HIGHER_IS_BETTER[name]``.
    """
    try:
        fn = SEPARATION_SCORES[name]
    except (KeyError, TypeError):
        raise ValueError(f"separation_score: unknown score {name!r}; expected one of "
                         f"{sorted(SEPARATION_SCORES)}") from None
    return fn(outputs, **kwargs)
