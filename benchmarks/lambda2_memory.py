"""Time and extra peak memory of matrix-free ``|lambda2|`` at CogVideoX token geometry.

Builds synthetic query/key tensors for ``frames x height x width`` visual tokens plus prompt
tokens (CogVideoX at 49 frames: 13 x 30 x 45 + 226 = 17,776 tokens), runs
:func:`vidinterp.kernels.spectral.second_eigenvalue_magnitude` (matrix-free Krylov path) and
prints wall time, extra peak memory, the size of one float32 ``tokens x tokens`` matrix for
comparison, and the number of attention-equivalent passes.

Extra peak memory is measured on CUDA with ``torch.cuda.max_memory_allocated`` and on CPU as
the peak resident set size (``VmRSS`` from ``/proc/self/status``, sampled by a background
thread every millisecond) minus the resident size just before the call.

Usage::

    python benchmarks/lambda2_memory.py                 # 17,776 tokens, 1 x 2 heads x 64 dims
    python benchmarks/lambda2_memory.py --small         # 4 x 10 x 15 + 26 = 626 tokens
    python benchmarks/lambda2_memory.py --qk local      # spatially local attention
    python benchmarks/lambda2_memory.py --check-dense   # also the dense oracle (small only)
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from vidinterp.kernels.spectral import Lambda2Estimate, second_eigenvalue_magnitude

_T = TypeVar("_T")


def _rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def _measure_cpu(
    fn: Callable[[], _T], interval_s: float = 0.001
) -> tuple[_T, float, int]:
    """Run ``fn``; return its result, wall seconds and peak RSS above the starting RSS."""
    baseline = _rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return result, wall, peak - baseline


def _measure_cuda(fn: Callable[[], _T], device: torch.device) -> tuple[_T, float, int]:
    """Run ``fn`` on CUDA; return its result, wall seconds and peak allocated bytes above start."""
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    return result, wall, torch.cuda.max_memory_allocated(device) - baseline


def _make_qk(
    kind: str,
    frames: int,
    height: int,
    width: int,
    prompt: int,
    batch: int,
    heads: int,
    head_dim: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic ``[batch, heads, tokens, head_dim]`` float32 query/key (prompt tokens first).

    ``random``: i.i.d. standard normal entries. ``local``: visual tokens carry random Fourier
    features of their (frame, row, column) position, shared by query and key, plus noise, so
    attention concentrates on space-time neighbours (a slowly mixing chain with ``|lambda2|``
    close to 1, like the local layers of video DiTs); prompt tokens are random. The dot
    product of two identical feature vectors is ``head_dim`` (``8`` after the default
    ``1 / sqrt(64)`` scale).
    """
    tokens = prompt + frames * height * width
    shape = (batch, heads, tokens, head_dim)
    if kind == "random":
        return torch.randn(shape, generator=generator), torch.randn(
            shape, generator=generator
        )
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(frames) / 2.0,
            torch.arange(height) / 3.0,
            torch.arange(width) / 3.0,
            indexing="ij",
        ),
        dim=-1,
    ).reshape(-1, 3)
    freqs = torch.randn(heads, 3, head_dim // 2, generator=generator)
    phase = grid @ freqs  # [heads, visual, head_dim // 2]
    features = torch.cat([phase.cos(), phase.sin()], dim=-1) * math.sqrt(2.0)
    visual = features.expand(batch, heads, -1, -1)
    text_q = torch.randn(batch, heads, prompt, head_dim, generator=generator)
    text_k = torch.randn(batch, heads, prompt, head_dim, generator=generator)
    noise = 0.25
    query = torch.cat(
        [text_q, visual + noise * torch.randn(visual.shape, generator=generator)], 2
    )
    key = torch.cat(
        [text_k, visual + noise * torch.randn(visual.shape, generator=generator)], 2
    )
    return query, key


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, default=13, help="latent frames (default 13)"
    )
    parser.add_argument(
        "--height", type=int, default=30, help="latent patch rows (default 30)"
    )
    parser.add_argument(
        "--width", type=int, default=45, help="latent patch cols (default 45)"
    )
    parser.add_argument(
        "--prompt", type=int, default=226, help="prompt tokens (default 226)"
    )
    parser.add_argument(
        "--small", action="store_true", help="use 4 x 10 x 15 + 26 = 626 tokens instead"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--qk", choices=("random", "local"), default="random")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--krylov-dim", type=int, default=4, help="passes per restart cycle"
    )
    parser.add_argument(
        "--block-size", type=int, default=None, help="default: head_dim"
    )
    parser.add_argument("--max-restarts", type=int, default=15)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument(
        "--query-chunk", type=int, default=None, help="default: automatic"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check-dense", action="store_true", help="also run method='dense' and compare"
    )
    args = parser.parse_args(argv)
    if args.small:
        args.frames, args.height, args.width, args.prompt = 4, 10, 15, 26

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    query, key = _make_qk(
        args.qk,
        args.frames,
        args.height,
        args.width,
        args.prompt,
        args.batch,
        args.heads,
        args.head_dim,
        generator,
    )
    dtype = getattr(torch, args.dtype)
    query, key = query.to(device, dtype), key.to(device, dtype)
    tokens = query.shape[2]

    def run() -> Lambda2Estimate:
        return second_eigenvalue_magnitude(
            query,
            key,
            krylov_dim=args.krylov_dim,
            block_size=args.block_size,
            max_restarts=args.max_restarts,
            tol=args.tol,
            query_chunk=args.query_chunk,
            generator=torch.Generator(device=device).manual_seed(args.seed),
            return_info=True,
        )

    # Warm up kernels and thread pools on a slice so the measurement sees only the solver.
    second_eigenvalue_magnitude(
        query[:, :, :256], key[:, :, :256], krylov_dim=2, max_restarts=0
    )
    if device.type == "cuda":
        info, wall, extra = _measure_cuda(run, device)
        memory_kind = "torch.cuda.max_memory_allocated delta"
    else:
        info, wall, extra = _measure_cpu(run)
        memory_kind = "peak VmRSS delta (1 ms sampler)"
    dense_bytes = tokens * tokens * 4

    print(
        f"device                     : {device} ({torch.get_num_threads()} CPU threads)"
    )
    print(
        f"geometry                   : {args.frames} x {args.height} x {args.width} visual + "
        f"{args.prompt} prompt = {tokens:,} tokens"
    )
    print(
        f"q/k                        : {args.qk}, batch {args.batch} x {args.heads} heads x "
        f"{args.head_dim} dims, {args.dtype}"
    )
    print(
        f"solver                     : block {info.block_size} x {info.krylov_dim} passes/cycle, "
        f"tol {args.tol:g}, max_restarts {args.max_restarts}"
    )
    print(f"wall time                  : {wall:.1f} s")
    print(
        f"attention-equivalent passes: {info.attention_passes} ({info.restarts} restarts)"
    )
    print(f"time per pass              : {wall / info.attention_passes:.2f} s")
    print(f"extra peak memory          : {extra / 2**20:.1f} MiB  [{memory_kind}]")
    print(
        f"one float32 P x P matrix   : {dense_bytes / 2**20:.1f} MiB ({dense_bytes:,} bytes)"
    )
    print(f"P x P / extra peak         : {dense_bytes / max(extra, 1):.1f}x")
    print(f"|lambda2| per head         : {info.modulus.flatten().tolist()}")
    print(f"Ritz residual per head     : {info.residual.flatten().tolist()}")
    print(f"converged                  : {info.converged.flatten().tolist()}")
    if args.check_dense:
        dense = second_eigenvalue_magnitude(query, key, method="dense")
        error = (dense - info.modulus).abs().max().item()
        print(f"dense |lambda2| per head   : {dense.flatten().tolist()}")
        print(f"max |krylov - dense|       : {error:.2e}")


if __name__ == "__main__":
    main()
