"""Temporal correspondence from cross-frame attention (DiffTrack): kernels and ground truth.

Between a reference token frame ``r`` and another token frame ``k`` of one site (per analysed
row ``b`` and head ``h``; ``q``, ``k`` the visual queries and keys after q/k norm and rotary,
``n`` tokens per frame)::

    A_fwd[i, j] = mean_{b,h} softmax_j( q_r[i] . k_k[j] / tau )      [n x n], rows sum to 1
    A_bwd[j, i] = mean_{b,h} softmax_i( q_k[j] . k_r[i] / tau )      [n x n], rows sum to 1
    C_k = (A_fwd + A_bwd^T) / 2
    match(i) = argmax_j C_k[i, j],   confidence(i) = max_j C_k[i, j]

``tau = sqrt(head_dim)`` by default (:data:`TEMPERATURES`). The kernels work frame pair by
frame pair and, inside a pair, on blocks of query rows, so no tensor is larger than
``[B, H, rows, n]`` (never ``P x P``); a first pass over the rows of frame ``k`` gives the
backward normaliser ``logsumexp_i`` so that the columns of ``A_bwd^T`` can be formed row block
by row block. Arithmetic is float32 whatever the model's dtype, and nothing is copied to the
host (no synchronisation).

Also here: the cross-frame attention *mass* (:func:`attention_mass`), ground truth for the
matching accuracy from a dense flow (:func:`truth_from_flow`, :func:`flow_from_shapes`), the
accuracy itself (:func:`matching_accuracy`) and the harmonic-mean ranking of layers and steps
(:func:`harmonic_mean`, :func:`best_layer_step`). See docs/methods.md, "Temporal correspondence
and tracking".
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, Union

import numpy as np
import torch
import xarray as xr

__all__ = [
    "TEMPERATURES",
    "Temperature",
    "temperature_scale",
    "block_budget",
    "frame_pair_correspondence",
    "attention_mass",
    "matching_accuracy",
    "truth_from_flow",
    "flow_from_shapes",
    "harmonic_mean",
    "best_layer_step",
]

#: Named temperatures: ``"sqrt_head_dim"`` (``tau = sqrt(d)``, the default, the scale attention
#: itself uses) and ``"sqrt_heads"`` (``tau = sqrt(H)``, what the reference tracking script
#: divides by, a slip kept only for parity with its numbers). A positive float is ``tau`` itself.
TEMPERATURES = ("sqrt_head_dim", "sqrt_heads")
Temperature = Union[Literal["sqrt_head_dim", "sqrt_heads"], float]

#: Upper bound on the elements of one score block, whatever the sizes.
MAX_BLOCK_ELEMENTS = 1 << 26


def temperature_scale(temperature: Temperature, head_dim: int, heads: int) -> float:
    """``1 / tau`` for a named temperature (:data:`TEMPERATURES`) or a positive ``tau``."""
    if isinstance(temperature, str):
        if temperature not in TEMPERATURES:
            raise ValueError(f"temperature must be one of {TEMPERATURES} or a positive number, got {temperature!r}")
        tau = math.sqrt(head_dim if temperature == "sqrt_head_dim" else heads)
    else:
        tau = float(temperature)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"temperature must be one of {TEMPERATURES} or a positive number, got {temperature!r}")
    return 1.0 / tau


def block_budget(visual_tokens: int, max_block: int | None = None) -> int:
    """Elements of one score block: ``max_block`` when given, else ``min(2**26, P*P // 8)`` for
    ``P`` visual tokens, so a block stays far below one ``P x P`` matrix at any size."""
    if max_block is not None:
        if int(max_block) < 1:
            raise ValueError(f"max_block must be a positive number of elements, got {max_block!r}")
        return int(max_block)
    return max(1, min(MAX_BLOCK_ELEMENTS, visual_tokens * visual_tokens // 8))


def _rows_per_block(batch: int, heads: int, columns: int, budget: int) -> int:
    return max(1, budget // max(1, batch * heads * columns))


def frame_pair_correspondence(
    query_ref: torch.Tensor,
    key_ref: torch.Tensor,
    query_other: torch.Tensor,
    key_other: torch.Tensor,
    *,
    scale: float,
    max_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric correspondence of one frame pair, reduced to its row maxima.

    Args:
        query_ref, key_ref: ``[B, H, n, d]`` queries and keys of the reference frame.
        query_other, key_other: ``[B, H, m, d]`` queries and keys of the other frame.
        scale: ``1 / tau``.
        max_block: most elements of one ``[B, H, rows, columns]`` score block.

    Returns:
        ``(match, confidence)``: ``int64 [n]``, the index ``j`` in the other frame maximising
        ``C[i, j]``, and ``float32 [n]``, that maximum (first index on ties).
    """
    batch, heads, n, _ = query_ref.shape
    m = query_other.shape[2]
    # pass 1: the backward softmax normaliser, logsumexp over reference keys i for each query j
    rows = _rows_per_block(batch, heads, n, max_block)
    key_ref32 = key_ref.float()
    lse_bwd = torch.cat([
        torch.logsumexp(torch.matmul(query_other[:, :, start:start + rows].float(), key_ref32.transpose(-1, -2)) * scale,
                        dim=-1)
        for start in range(0, m, rows)
    ], dim=2)  # [B, H, m]
    # pass 2: row blocks of the reference frame; both directions, averaged over rows and heads
    rows = _rows_per_block(batch, heads, m, max_block)
    key_other32 = key_other.float().transpose(-1, -2)
    query_other32 = query_other.float().transpose(-1, -2)
    matches, peaks = [], []
    for start in range(0, n, rows):
        forward = torch.softmax(torch.matmul(query_ref[:, :, start:start + rows].float(), key_other32) * scale, dim=-1)
        backward = torch.exp(torch.matmul(key_ref[:, :, start:start + rows].float(), query_other32) * scale
                             - lse_bwd[:, :, None, :])  # A_bwd^T rows: [B, H, rows, m]
        combined = (forward.mean(dim=(0, 1)) + backward.mean(dim=(0, 1))) / 2
        peak, index = combined.max(dim=-1)
        matches.append(index)
        peaks.append(peak)
    return torch.cat(matches), torch.cat(peaks)


def attention_mass(
    query: torch.Tensor,
    keys: torch.Tensor,
    groups: Sequence[slice],
    *,
    scale: float,
    key_mask: torch.Tensor | None = None,
    max_block: int,
) -> torch.Tensor:
    """Attention mass from ``query`` to groups of ``keys`` under the softmax over all ``keys``.

    ``mass[g] = mean_{b, h, i} sum_{j in groups[g]} softmax_j(q[i] . k[j] * scale)`` with the
    softmax over every key the model attends to (``key_mask`` ``[B, S]``: False where masked).

    Args:
        query: ``[B, H, n, d]``; keys: ``[B, H, S, d]`` (the site's whole key sequence).

    Returns:
        ``float32 [len(groups)]`` on the query's device.
    """
    batch, heads, n, _ = query.shape
    total = keys.shape[2]
    columns = max(1, min(total, max_block // max(1, batch * heads)))
    rows = _rows_per_block(batch, heads, columns, max_block)
    bias = None
    if key_mask is not None:
        bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=keys.device)
        bias = bias.masked_fill(~key_mask.to(keys.device, torch.bool), -math.inf)[:, None, None, :]  # [B, 1, 1, S]
    sums = torch.zeros(len(groups), dtype=torch.float32, device=query.device)
    for start in range(0, n, rows):
        block = query[:, :, start:start + rows].float()

        def scores(keys_slice: slice) -> torch.Tensor:
            value = torch.matmul(block, keys[:, :, keys_slice].float().transpose(-1, -2)) * scale
            return value if bias is None else value + bias[..., keys_slice]

        lse = torch.stack([torch.logsumexp(scores(slice(c, min(c + columns, total))), dim=-1)
                           for c in range(0, total, columns)], dim=-1).logsumexp(dim=-1)  # [B, H, rows]
        for g, group in enumerate(groups):
            span = range(total)[group]
            part = torch.zeros((), dtype=torch.float32, device=query.device)
            for c in range(span.start, span.stop, columns):
                piece = slice(c, min(c + columns, span.stop))
                part = part + torch.exp(scores(piece) - lse[..., None]).sum()
            sums[g] += part
    return sums / (batch * heads * n)


# -------------------------------------------------------------------- ground truth and scores
def matching_accuracy(match: np.ndarray, truth: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """Share of reference cells whose match lies within ``radius`` token cells (Euclidean) of
    the true cell, per frame.

    Args:
        match: ``[..., F, h, w, 2]`` matched ``(y, x)`` cells.
        truth: ``[F, h, w, 2]`` true ``(y, x)`` cells, NaN where unknown (occluded, out of frame).

    Returns:
        ``float [..., F]``: NaN for a frame with no known cell.
    """
    truth = np.asarray(truth, dtype=np.float64)
    known = np.isfinite(truth).all(axis=-1)  # [F, h, w]
    distance = np.sqrt(((np.asarray(match, dtype=np.float64) - np.nan_to_num(truth)) ** 2).sum(axis=-1))
    hits = ((distance <= radius + 1e-9) & known).sum(axis=(-1, -2))
    counts = known.sum(axis=(-1, -2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def truth_from_flow(
    flow: np.ndarray,
    grid: tuple[int, int, int],
    cell: tuple[int, int],
    pixel_frames: Sequence[int],
    reference: int = 0,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """True matches of every reference token cell from a dense flow, for
    :class:`~vidinterp.analyses.correspondence.Correspondence` ``(truth=...)``.

    Pixel coordinates follow :mod:`vidinterp.pixels`: column ``c`` covers ``[c, c + 1)``, token
    cell ``x`` has its centre at ``(x + 0.5) * c_x``.

    Args:
        flow: ``float [T, H, W, 2]`` ``(dx, dy)`` pixels: the point of pixel frame
            ``pixel_frames[reference]`` at ``(x, y)`` is at ``(x + dx, y + dy)`` in pixel frame
            ``t``.
        grid: ``(F, h, w)`` token frames, rows and columns.
        cell: ``(c_y, c_x)`` pixels per token cell.
        pixel_frames: the pixel frame standing for each token frame (e.g. the last of its span,
            ``pixel_frame_last``).
        reference: the reference token frame.
        valid: ``bool [T, H, W]``, False where the flow is unknown (occluded); default all True.

    Returns:
        ``float [F, h, w, 2]``: the true ``(y, x)`` cell in token frame ``k`` of reference cell
        ``(y, x)``, read at the reference cell's centre pixel; NaN where unknown or out of frame.
    """
    frames, rows, columns = grid
    cell_y, cell_x = cell
    flow = np.asarray(flow, dtype=np.float64)
    centre_y = np.arange(rows) * cell_y + cell_y // 2
    centre_x = np.arange(columns) * cell_x + cell_x // 2
    truth = np.full((frames, rows, columns, 2), np.nan)
    for k in range(frames):
        t = int(pixel_frames[k])
        displacement = flow[t][np.ix_(centre_y, centre_x)]  # [h, w, 2] (dx, dy)
        x = (np.arange(columns) + 0.5)[None, :] * cell_x + displacement[..., 0]
        y = (np.arange(rows) + 0.5)[:, None] * cell_y + displacement[..., 1]
        target_y, target_x = np.floor(y / cell_y), np.floor(x / cell_x)
        ok = (target_y >= 0) & (target_y < rows) & (target_x >= 0) & (target_x < columns)
        if valid is not None:
            ok &= np.asarray(valid)[t][np.ix_(centre_y, centre_x)]
        truth[k, ..., 0] = np.where(ok, target_y, np.nan)
        truth[k, ..., 1] = np.where(ok, target_x, np.nan)
    return truth


def flow_from_shapes(clip, reference_frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The exact flow of a shapes clip (:mod:`vidinterp.datasets.shapes`, objects translate
    rigidly) from pixel frame ``reference_frame`` to every frame: ``(flow float [T, H, W, 2],
    valid bool [T, H, W])``. A pixel of object ``o`` moves by ``tracks[o, t] -
    tracks[o, reference_frame]`` and is valid where it lands inside the frame on ``o``'s visible
    mask; a background pixel stays and is valid where no object covers it at ``t``."""
    masks = np.asarray(clip.masks)  # [objects, T, H, W]
    tracks = np.asarray(clip.tracks, dtype=np.float64)  # [objects, T, 2] (x, y)
    objects, frames, height, width = masks.shape
    flow = np.zeros((frames, height, width, 2))
    background = ~masks.any(axis=0)  # [T, H, W]
    valid = background & background[reference_frame][None]
    ys, xs = np.mgrid[0:height, 0:width]
    for o in range(objects):
        inside = masks[o, reference_frame]
        for t in range(frames):
            dx, dy = tracks[o, t] - tracks[o, reference_frame]
            flow[t][inside] = (dx, dy)
            x, y = np.rint(xs + dx).astype(int), np.rint(ys + dy).astype(int)
            landed = inside & (x >= 0) & (x < width) & (y >= 0) & (y < height)
            on_object = np.zeros_like(inside)
            on_object[landed] = masks[o, t][y[landed], x[landed]]
            valid[t] |= on_object
    return flow, valid


def harmonic_mean(*scores: np.ndarray) -> np.ndarray:
    """Element-wise harmonic mean of non-negative scores (0 where any is 0; NaN where any is
    NaN)."""
    stacked = np.stack([np.asarray(score, dtype=np.float64) for score in scores])
    with np.errstate(divide="ignore", invalid="ignore"):
        value = len(scores) / np.sum(1.0 / stacked, axis=0)
    value = np.where((stacked == 0).any(axis=0), 0.0, value)
    return np.where(np.isnan(stacked).any(axis=0), np.nan, value)


def best_layer_step(score: xr.DataArray) -> tuple[int, int]:
    """``(layer, step)`` of the highest value of a ``(layer, step)`` score (NaN ignored)."""
    values = np.asarray(score.transpose("layer", "step").values, dtype=np.float64)
    if not np.isfinite(values).any():
        raise ValueError("no finite correspondence score to rank layers and steps by")
    layer, step = np.unravel_index(int(np.nanargmax(values)), values.shape)
    return int(score.layer.values[layer]), int(score.step.values[step])
