"""Speed, accuracy and memory of ``|lambda2|`` for every head of a layer (issue 22).

Target: lambda2 for every head of a layer in at most 2x one attention forward's time, with
extra peak memory under 5% of one float32 ``P x P`` matrix, accuracy checked against dense
eigenvalues at small ``P``.

For each token count ``P`` and attention regime (synthetic ``q``, ``k`` of ``heads`` heads of
``dim`` dims, random values ``v``, ``z = SDPA(q, k, v)`` as the forward computed it) this times:

* ``forward``: one attention forward of the layer, ``scaled_dot_product_attention(q, k, v)``
  (float32, the same kernel the solver sweeps with);
* ``ritz``: :func:`second_eigenvalue_magnitude` with ``stop="ritz"`` and the free first block
  from ``(v, z)``, as the ``Lambda2`` analysis calls it, at ``tol`` 1e-3 (the default) and 1e-2
  (enough for the 0.7 / 0.75 layer thresholds);
* ``residual``: the previous default solver (``stop="residual"``, restarted, tol 1e-5);

and reports passes (extra attention sweeps, mean over heads), time ratios, the error of the
ritz estimate against dense ``torch.linalg.eigvals`` (``P <= --dense-max``) or else against the
residual solver, the Krylov basis and estimated/measured extra peak memory next to 5% of one
float32 ``P x P`` matrix. Times are the minimum over 5 forwards and over 2 ritz calls (one
call of the slow residual solver), single-threaded by default: on a shared CPU the minimum is
the least disturbed measurement; the pass counts are exact. Measured memory is the peak of the
C heap's bytes in use (glibc ``mallinfo2``: ``uordblks + hblkhd``, which counts freed-and-reused
memory correctly, unlike the resident set size; ``VmRSS`` where ``mallinfo2`` is missing) above
its level before the call, sampled by a background thread every 0.2 ms, from a second call so
that one-time allocations (thread pools, LAPACK workspaces) are excluded.

Usage::

    python benchmarks/lambda2_speed.py                       # P = 1536, 4096, 8192; ~15 min
    python benchmarks/lambda2_speed.py --tokens 1024 --regimes uniform grid --no-old

Writes ``benchmarks/results/lambda2_speed.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vidinterp.kernels.spectral import krylov_plan, second_eigenvalue_magnitude

REGIMES = ("uniform", "moderate", "high", "clustered", "grid", "masked", "identity")
RESULTS = Path(__file__).resolve().parent / "results" / "lambda2_speed.json"


def grid_embedding(tokens: int, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a ``frames x side x side`` grid (4 frames), ``[tokens, dim]``."""
    side = max(2, round((tokens / 4) ** 0.5))
    index = torch.arange(tokens)
    position = torch.stack(
        [(index // (side * side)).float(), ((index // side) % side).float(), (index % side).float()], -1
    )
    angles = position[:, :, None] * torch.linspace(0.15, 1.0, dim // 6)
    embedding = torch.cat([angles.sin(), angles.cos()], -1).reshape(tokens, -1)
    return F.pad(embedding, (0, dim - embedding.shape[1]))


def make_case(
    regime: str, tokens: int, heads: int = 2, dim: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(q, k, v, z, key_padding_mask)`` float32 for one attention regime.

    Regimes (``|lambda2|`` at ``P ~ 600-1500``): ``uniform`` (near-uniform attention, ~0.02),
    ``moderate`` (~0.4-0.6), ``high`` (~0.8-0.9), ``clustered`` (4 token clusters with weak
    leakage: three eigenvalues ~0.88-0.95), ``grid`` (local attention on a video-like grid,
    clustered ~0.9), ``masked`` (batch 2 with padded prompt slots, ~0.8-0.94) and ``identity``
    (near-identity attention: a hard, clustered spectrum ~0.99-0.999).
    """
    generator = torch.Generator().manual_seed(seed)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    batch, mask = 1, None
    temperatures = {"uniform": 0.3, "moderate": 0.7, "high": 0.8, "identity": 1.0}
    if regime in temperatures:
        t = temperatures[regime]
        query = t * noise(1, heads, tokens, dim)
        key = query + 0.3 * t * noise(1, heads, tokens, dim)
    elif regime == "masked":
        batch = 2
        query = 0.78 * noise(2, heads, tokens, dim)
        key = query + 0.25 * noise(2, heads, tokens, dim)
        mask = torch.ones(2, tokens, dtype=torch.bool)
        mask[0, 5 : 5 + tokens // 8] = False
        mask[1, tokens - tokens // 4 :] = False
    elif regime == "clustered":
        cut = torch.tensor([0.34, 0.28, 0.22, 0.16]).cumsum(0)[:-1]
        group = torch.bucketize(torch.rand(tokens, generator=generator), cut)
        centres = noise(4, dim)
        centres = centres / centres.norm(dim=-1, keepdim=True)
        base = centres[group] * torch.tensor([5.6, 5.8, 6.0, 6.2])[group, None]
        query = base + 0.6 * noise(1, heads, tokens, dim)
        key = base + 0.6 * noise(1, heads, tokens, dim)
        query = query * torch.linspace(1.0, 1.05, heads)[None, :, None, None]
    elif regime == "grid":
        embedding = grid_embedding(tokens, dim)
        sharpness = 3.0 * torch.linspace(1.0, 1.1, heads)[None, :, None, None]
        query = sharpness * embedding + 0.3 * noise(1, heads, tokens, dim)
        key = embedding + 0.3 * noise(1, heads, tokens, dim)
    else:
        raise KeyError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    values = noise(batch, heads, tokens, dim)
    attn_mask = None if mask is None else mask[:, None, None, :]
    output = F.scaled_dot_product_attention(query, key, values, attn_mask=attn_mask)
    return query, key, values, output, mask


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]


def _heap_reader() -> Callable[[], int]:
    """Bytes of the C heap in use (glibc ``mallinfo2``), else the resident set size."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2

        def in_use() -> int:
            info = libc.mallinfo2()
            return info.uordblks + info.hblkhd

        in_use()
        return in_use
    except (OSError, AttributeError):

        def rss() -> int:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")

        return rss


_memory_in_use = _heap_reader()


def measure(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Run ``fn``; return its result, wall seconds and peak heap use above the starting level."""
    gc.collect()
    baseline = _memory_in_use()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _memory_in_use())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return result, seconds, peak[0] - baseline


def run_case(
    regime: str, tokens: int, heads: int, dim: int, *, tols: list[float], dense_max: int, old: bool
) -> dict[str, Any]:
    query, key, values, output, mask = make_case(regime, tokens, heads, dim)
    attn_mask = None if mask is None else mask[:, None, None, :]
    F.scaled_dot_product_attention(query, key, values, attn_mask=attn_mask)  # warm-up
    # Minimum over repeats: on a shared CPU the minimum is the least disturbed measurement.
    forward = min(
        measure(lambda: F.scaled_dot_product_attention(query, key, values, attn_mask=attn_mask))[1]
        for _ in range(5)
    )
    plan = krylov_plan(heads, tokens, min(dim, tokens // 3), batch=query.shape[0])
    row: dict[str, Any] = {
        "regime": regime,
        "tokens": tokens,
        "batch": query.shape[0],
        "heads": heads,
        "head_dim": dim,
        "forward_s": forward,
        "groups": plan.groups,
        "basis_bytes": plan.basis_bytes,
        "estimated_peak_bytes": plan.peak_bytes,
        "five_percent_bytes": int(0.05 * tokens * tokens * 4),
        "ritz": {},
    }
    reference, reference_name = None, None
    if tokens <= dense_max:
        reference = second_eigenvalue_magnitude(query, key, key_padding_mask=mask, method="dense")
        reference_name = "dense"
    if old:
        old_estimate, old_seconds, _ = measure(
            lambda: second_eigenvalue_magnitude(query, key, key_padding_mask=mask, stop="residual", return_info=True)
        )
        row["old"] = {
            "seconds": old_seconds,
            "ratio": old_seconds / forward,
            "passes": int(old_estimate.attention_passes),
        }
        if reference is None:
            reference, reference_name = old_estimate.modulus, "residual"
        else:
            row["old"]["error"] = float((old_estimate.modulus - reference).abs().max())
    for tol in tols:

        def ritz(tol: float = tol) -> Any:
            return second_eigenvalue_magnitude(
                query, key, values=values, output=output, key_padding_mask=mask, stop="ritz", tol=tol,
                return_info=True,
            )

        _, first, _ = measure(ritz)  # also the warm-up: one-time allocations
        estimate, seconds, extra = measure(ritz)
        seconds = min(first, seconds)
        assert estimate.basis_bytes == plan.basis_bytes
        entry = {
            "seconds": seconds,
            "ratio": seconds / forward,
            "passes_mean": float(estimate.passes.float().mean()),
            "passes_max": int(estimate.attention_passes),
            "restarts": int(estimate.restarts),
            "free_start": bool(estimate.free_start.all()),
            "converged": bool(estimate.converged.all()),
            "measured_extra_bytes": int(extra),
            "modulus": estimate.modulus.flatten().tolist(),
        }
        if reference is not None:
            entry["error"] = float((estimate.modulus - reference).abs().max())
        if "old" in row:
            entry["speedup_vs_old"] = row["old"]["seconds"] / seconds
        row["ritz"][f"{tol:g}"] = entry
    row["measured_extra_bytes"] = max(entry["measured_extra_bytes"] for entry in row["ritz"].values())
    if reference is not None:
        row["error_reference"] = reference_name
        row["lambda2"] = reference.flatten().tolist()
    return row


def _format(row: dict[str, Any], tols: list[float]) -> str:
    cells = [f"{row['tokens']:>5d}", f"{row['regime']:<9s}", f"{max(row.get('lambda2', [math.nan])):.3f}"]
    for tol in tols:
        entry = row["ritz"][f"{tol:g}"]
        error = f"{entry['error']:.0e}" if "error" in entry else "-"
        speedup = f"{entry['speedup_vs_old']:.1f}x" if "speedup_vs_old" in entry else "-"
        cells += [f"{entry['passes_mean']:.1f}", f"{entry['ratio']:.2f}", speedup, error]
    if "old" in row:
        cells += [f"{row['old']['passes']}", f"{row['old']['ratio']:.1f}"]
    else:
        cells += ["-", "-"]
    mib = 2**20
    cells += [
        f"{row['basis_bytes'] / mib:.1f}",
        f"{row['estimated_peak_bytes'] / mib:.1f}",
        f"{row['measured_extra_bytes'] / mib:.1f}",
        f"{row['five_percent_bytes'] / mib:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _header(tols: list[float]) -> str:
    cells = ["P", "regime", "lambda2"]
    for tol in tols:
        cells += [f"passes@{tol:g}", "t/fwd", "vs old", "err"]
    cells += ["old passes", "old t/fwd", "basis MiB", "est. peak MiB", "meas. peak MiB", "5% PxP MiB"]
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1536, 4096, 8192])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-2], help="stop='ritz' tolerances")
    parser.add_argument("--dense-max", type=int, default=2048, help="largest P checked against dense eigenvalues")
    parser.add_argument("--no-old", action="store_true", help="skip the previous (residual) solver")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    print(_header(args.tols), flush=True)
    for tokens in args.tokens:
        for regime in args.regimes:
            row = run_case(
                regime, tokens, args.heads, args.dim, tols=args.tols, dense_max=args.dense_max, old=not args.no_old
            )
            rows.append(row)
            print(_format(row, args.tols), flush=True)
    result = {
        "settings": {
            "tokens": args.tokens,
            "heads": args.heads,
            "head_dim": args.dim,
            "threads": args.threads,
            "dtype": "float32",
            "ritz": {"tols": args.tols, "max_passes": 12, "memory_fraction": 0.05, "free_first_block": True},
            "residual": {"tol": 1e-5, "krylov_dim": 4, "max_restarts": 40},
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
