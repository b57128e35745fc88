"""Independent numpy oracles for the analyses (explicit loops and full matrices, fine on small
tensors), shared by the analysis tests."""

from __future__ import annotations

import numpy as np

from vidinterp.context import TraceContext

CONCEPTS = ["dog", "walking", "grass"]


def run(analysis, visits, concepts=CONCEPTS, num_layers=4, **context):
    """Bind ``analysis`` (``context``: more :class:`TraceContext` fields), feed it ``visits``,
    return its result."""
    analysis.bind(TraceContext(concepts=concepts, num_layers=num_layers, num_inference_steps=10, **context))
    for visit in visits:
        analysis.observe(visit)
    return analysis.result()


def numpy_parts(visit):
    """Conditional-row numpy arrays of one visit: q_x, o_x [B,H,P,d]; k_c, o_c [B,H,C,d]."""
    return (visit.get("q", "visual").double().numpy(), visit.get("z", "visual").double().numpy(),
            visit.get("k", "concept").double().numpy(), visit.get("z", "concept").double().numpy())


def brute_qk_peaks(q, k, frames):
    """s[b, h, c, f] by explicit loops over frames (global token index)."""
    batch, heads, tokens, dim = q.shape
    n = tokens // frames
    peaks = np.zeros((batch, heads, k.shape[2], frames), dtype=int)
    for b in range(batch):
        for h in range(heads):
            for c in range(k.shape[2]):
                for f in range(frames):
                    scores = [q[b, h, p] @ k[b, h, c] / np.sqrt(dim) for p in range(f * n, (f + 1) * n)]
                    peaks[b, h, c, f] = f * n + int(np.argmax(scores))
    return peaks


def brute_gramcol(o, peaks, frames, heads, zscore=False, head_reduction="mean"):
    """Full Gram matrix per head, then the surrogate column inside each frame -> [C, P]."""
    batch, _, tokens, _ = o.shape
    n = tokens // frames
    per_head = []
    for h in heads:
        maps = np.zeros((batch, peaks.shape[2], tokens))
        for b in range(batch):
            gram = o[b, h] @ o[b, h].T  # P x P: fine for an oracle
            for c in range(peaks.shape[2]):
                for f in range(frames):
                    maps[b, c, f * n:(f + 1) * n] = gram[peaks[b, h, c, f], f * n:(f + 1) * n]
        per_head.append(maps)
    stacked = np.stack(per_head, axis=1)  # [B, h, C, P]
    if zscore:
        stacked = (stacked - stacked.mean(axis=2, keepdims=True)) / (stacked.std(axis=2, ddof=1, keepdims=True) + 1e-6)
    reduced = stacked.sum(axis=1) if head_reduction == "sum" else stacked.mean(axis=1)
    return reduced.mean(axis=0)


def softmax(maps, axis=0):
    """Softmax of ``maps`` over ``axis``."""
    shifted = np.exp(maps - maps.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)
