"""Tracing cost at the published model sizes, without a GPU: FLOPs, peak memory, largest tensor.

Every model of :data:`vidinterp.testing.real_configs.REAL_MODELS` (CogVideoX-2B/5B,
CogVideoX1.5-5B, HunyuanVideo, Wan2.1-1.3B/14B, FLUX.1-dev, SD3.5-Large) is built with its
published transformer configuration as *fake tensors* (``torch._subclasses.fake_tensor
.FakeTensorMode``: shapes, dtypes and devices, no storage; bfloat16 as the models run) and one
transformer forward at its native geometry runs twice, as a renoising step of ``vidinterp.trace``
runs it (:meth:`Adapter.denoiser`, the adapter's guidance and batch):

* **plain**: the stock model;
* **traced**: with the trace installed (:func:`vidinterp.install.installed`: site processors,
  call listener, concept stream) and the default analyses
  (:func:`vidinterp.trace.default_analyses`) observing the step, concepts ``dog`` and ``grass``.

Measured per run:

* **FLOPs** with ``torch.utils.flop_counter.FlopCounterMode`` (matmul-class ops: mm, bmm,
  einsum, SDPA), plus formulas this CPU run needs: ``_scaled_dot_product_flash_attention_for_cpu``
  (the SDPA kernel fake CPU tensors dispatch to; torch's SDPA formula) and ``_cdist_forward``
  (silhouette distances, 3 FLOPs per coordinate pair).
* **peak memory**: :class:`AllocationTracker`, a ``TorchDispatchMode`` that sees every op's
  outputs; a new storage (one not among the op's inputs' storages) counts its bytes while it is
  alive (``StorageWeakRef``, checked before each op). Peak = the most bytes of storages made
  during the forward alive at once (weights and the inputs made before the call are not
  counted: the ratio compares activations). It also attributes each allocation to the code
  that made it (:func:`allocation_owner`), which torch's trackers do not. Cross-check: torch's
  ``torch.distributed._tools.mem_tracker.MemTracker`` works on fake CPU tensors too; its peak of
  the plain forward (:func:`memtracker_peak`, ``peak_bytes_plain_memtracker``) agrees within 1%.
* **largest vidinterp tensor**, in two kinds (:func:`allocation_owner`): *site processor*
  (vidinterp's copy of a stock attention processor's math, e.g. CogVideoX's and SD3's rewritten
  processors; the stock SDPA call itself counts as the model's) and *analyses + stream* (work
  the plain model does not do: runtime, concept stream, install hooks, analyses, kernels; also
  its live peak, the most bytes of such tensors alive at once). Compared with ``P x P`` (``P``
  visual tokens); any vidinterp allocation of ``P*P`` elements or more is a violation.

Fake-tensor conventions: tensors made from host data (numpy subsample indices, Python lists,
small ``arange``/``zeros`` results such as Flux's position ids, which its adapter reads) keep
their values (FakeTensor constants, :func:`fake_mode`), so data-dependent code on host data runs
exactly. Values computed from activations are unknown: a ``nonzero`` of such a tensor would be
taken as all-nonzero (an upper bound on the work that follows; ``assumed_nonzero`` counts them,
0 in the current run, as the head selectors rank heads on the device without one), and any other
read of such a value (``.item()``) fails the model, which the table then reports as unable to run.

Usage::

    python benchmarks/real_sizes.py                        # every model, full size
    python benchmarks/real_sizes.py --models cogvideox-5b --layers 2

Writes ``benchmarks/results/real_sizes.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.utils.flop_counter as flop_counter
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import vidinterp
import vidinterp.adapters
import vidinterp.analyses
from vidinterp import processors
from vidinterp.analysis import Analysis
from vidinterp.concept_stream import concept_state
from vidinterp.context import TraceContext
from vidinterp.install import installed
from vidinterp.registry import adapter_for
from vidinterp.runtime import Runtime
from vidinterp.trace import default_analyses
from vidinterp.testing.real_configs import REAL_MODELS, parameter_count, real_model, real_pipeline

OUT = Path(__file__).resolve().parent / "results" / "real_sizes.json"
CONCEPTS = ("dog", "grass")
PROMPT = "a dog walks on the grass"
NUM_INFERENCE_STEPS = 50
#: latent channels of every family's published VAE (Flux packs 2x2 of them into 64 inputs)
LATENT_CHANNELS = 16
#: whether a family's latents put frames before channels (``Adapter.encode_video`` layouts)
FRAMES_FIRST = {"cogvideox": True}


# ------------------------------------------------------------------------ where an op runs
def _roots(*modules) -> tuple[str, ...]:
    return tuple(str(Path(module.__file__).resolve().parent) for module in modules)


_VIDINTERP = _roots(vidinterp, vidinterp.adapters, vidinterp.analyses)
_TORCH = _roots(torch)
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
#: installed packages: this interpreter's site directories and any other on sys.path (a venv
#: with --system-site-packages sees the base interpreter's too)
_SITE = tuple({str(Path(path).resolve()) for path in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                      *sys.path) if Path(path).name in ("site-packages", "dist-packages")})
_MODEL_KERNEL = {processors.attention.__code__}  # the stock SDPA call of rewritten processors


#: vidinterp files whose code is work the plain model does not do (site visits, concept stream,
#: analyses); the rest of vidinterp on the stack is the site processors' copy of the model's math
_EXTRA_FILES = ("runtime.py", "concept_stream.py", "install.py", "analysis.py", "maps.py", "accumulators.py")
_EXTRA_DIRS = _roots(vidinterp.analyses) + tuple(str(Path(root) / "kernels") for root in _roots(vidinterp))


def _is_extra(path: str) -> bool:
    return path.startswith(_EXTRA_DIRS) or (path.startswith(_VIDINTERP) and Path(path).name in _EXTRA_FILES)


def _skipped(path: str) -> bool:
    """torch and standard-library frames: never the code that asked for an op."""
    return path.startswith(_TORCH) or (path.startswith(_STDLIB) and not path.startswith(_SITE)) or path.startswith("<")


def allocation_owner(frame) -> tuple[str, str]:
    """``(owner, where)`` of an op called below ``frame``:

    * ``"vidinterp:extra"`` when work the plain model does not do is on the stack (vidinterp's
      runtime, concept stream, install hooks, analyses, kernels; also a user analysis they call);
    * else, from the innermost Python frame outside torch and the standard library:
      ``"model"`` for diffusers / transformers code and ``processors.attention`` (the stock SDPA
      call of a rewritten processor), ``"vidinterp:processor"`` for other vidinterp code (a
      site processor's copy of the stock attention math), ``"driver"`` for anything else.

    ``where`` is ``file:function:line`` of the innermost frame outside torch, the standard
    library and site-packages (vidinterp's or the caller's code), else of the innermost one."""
    owner, where, inner = None, "?", None
    while frame is not None:
        path = frame.f_code.co_filename
        if not _skipped(path):
            here = f"{Path(path).name}:{frame.f_code.co_name}:{frame.f_lineno}"
            library = path.startswith(_SITE) and not path.startswith(_VIDINTERP)
            if owner is None:
                where = here
                if frame.f_code in _MODEL_KERNEL or library:
                    owner = "model"
                else:
                    owner = "vidinterp:processor" if path.startswith(_VIDINTERP) else "driver"
            if inner is None and not library:
                inner = here
            if _is_extra(path):
                return "vidinterp:extra", inner or where
        frame = frame.f_back
    return owner or "driver", where


def _unknown_values(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, fake_tensor.FakeTensor) and tensor.constant is None


class AllocationTracker(TorchDispatchMode):
    """Live bytes of the storages ops allocate, their peak, and the largest allocation of each
    owner (:func:`allocation_owner`); works on fake tensors (run it inside ``FakeTensorMode``).
    ``nonzero`` of a tensor of unknown values is answered as if every element were nonzero."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[StorageWeakRef, tuple[int, str]] = {}  # bytes, owner
        self.current = self.peak = 0
        self.owner_current: dict[str, int] = {}
        self.owner_peak: dict[str, int] = {}  # most bytes of each owner's storages alive at once
        self.largest: dict[str, dict[str, Any]] = {}
        self.allocations: list[tuple[str, str, int, tuple[int, ...]]] = []  # owner, where, numel, shape (vidinterp)
        self.assumed_nonzero = 0

    def _sweep(self) -> None:
        for ref in [ref for ref in self.live if ref.expired()]:
            nbytes, owner = self.live.pop(ref)
            self.current -= nbytes
            self.owner_current[owner] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._sweep()
        if func is torch.ops.aten.nonzero.default and _unknown_values(args[0]):
            self.assumed_nonzero += 1
            out = torch.ops.aten.empty.memory_format([args[0].numel(), args[0].dim()], dtype=torch.int64,
                                                      device=args[0].device)
        else:
            out = func(*args, **kwargs)
        inputs = {StorageWeakRef(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        owner = None
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ref = StorageWeakRef(storage)
            if ref in inputs or ref in self.live:
                continue  # a view or an in-place result
            nbytes = storage.nbytes()
            if owner is None:
                owner, where = allocation_owner(sys._getframe(1))
            self.live[ref] = (nbytes, owner)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            self.owner_current[owner] = self.owner_current.get(owner, 0) + nbytes
            self.owner_peak[owner] = max(self.owner_peak.get(owner, 0), self.owner_current[owner])
            numel = tensor.numel()
            best = self.largest.get(owner)
            if best is None or numel > best["numel"]:
                self.largest[owner] = {"numel": numel, "shape": list(tensor.shape), "dtype": str(tensor.dtype),
                                       "where": where, "op": str(func)}
            if owner.startswith("vidinterp"):
                self.allocations.append((owner, where, numel, tuple(tensor.shape)))
        return out


def _cdist_flop(x1_shape, x2_shape, *args, out_shape=None, **kwargs) -> int:
    """``cdist`` without the matmul trick: a difference, a square and an add per coordinate pair."""
    *batch, rows, dim = x1_shape
    return 3 * math.prod(batch) * rows * x2_shape[-2] * dim


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel, counted as torch counts the CUDA SDPA kernels."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._cdist_forward: _cdist_flop,
}


HOST_DATA_LIMIT = 2**16
_UNDEFINED_VALUES = (torch.ops.aten.empty, torch.ops.aten.empty_strided)


class HostData(TorchDispatchMode):
    """Inside ``FakeTensorMode``: tensors made from host values alone (``arange``, ``zeros``,
    ``full``, ... of at most :data:`HOST_DATA_LIMIT` elements, no tensor inputs, not random)
    are computed for real and kept as FakeTensor constants, as ``torch.tensor(...)`` data is,
    so code that reads such values (position ids, masks of known content) runs exactly."""

    def __init__(self, mode: FakeTensorMode) -> None:
        super().__init__()
        self.mode = mode

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (not isinstance(out, torch.Tensor) or out.numel() > HOST_DATA_LIMIT
                or func.overloadpacket in _UNDEFINED_VALUES or torch.Tag.nondeterministic_seeded in func.tags
                or any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves((args, kwargs)))):
            return out
        with unset_fake_temporarily():
            real = func(*args, **kwargs)
        return self.mode.fake_tensor_converter.from_real_tensor(self.mode, real, make_constant=True)


@contextmanager
def fake_mode() -> Iterable[FakeTensorMode]:
    """A ``FakeTensorMode`` in which host data keeps its values: tensors made from numpy arrays
    and Python lists (FakeTensor constants, up to :data:`HOST_DATA_LIMIT` elements instead of
    torch's 1) and small factory results (:class:`HostData`); ops on constants only are computed
    for real, so data-dependent code on host data runs exactly."""
    limit = fake_tensor.CONSTANT_NUMEL_LIMIT
    fake_tensor.CONSTANT_NUMEL_LIMIT = HOST_DATA_LIMIT
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, HostData(mode):
            yield mode
    finally:
        fake_tensor.CONSTANT_NUMEL_LIMIT = limit


def memtracker_peak(run: Callable[[], Any], module: torch.nn.Module) -> int:
    """Peak bytes of ``run()`` other than ``module``'s parameters and buffers as torch's own
    tracker sees them (``torch.distributed._tools.mem_tracker.MemTracker``, which works on fake
    CPU tensors): a cross-check of :class:`AllocationTracker` on the plain forward."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    tracker = MemTracker()
    tracker.track_external(module)
    with tracker, torch.no_grad():
        output = run()
    del output
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return int(peak["Total"] - peak[_MemRefType.PARAM] - peak[_MemRefType.BUFFER])


def measure(run: Callable[[], Any]) -> dict[str, Any]:
    """FLOPs, peak bytes and largest allocations of ``run()`` (inside :func:`fake_mode`)."""
    tracker = AllocationTracker()
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    start = time.perf_counter()
    with counter, tracker, torch.no_grad():
        output = run()
    del output
    return {"flops": int(counter.get_total_flops()), "peak_bytes": int(tracker.peak), "largest": tracker.largest,
            "owner_peak_bytes": dict(tracker.owner_peak),
            "assumed_nonzero": tracker.assumed_nonzero, "vidinterp_allocations": tracker.allocations,
            "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------ one model
def latents_for(adapter, family: str, geometry: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """Fake latents of ``geometry`` in the layout the adapter's ``encode_video`` returns (the
    VAE itself is not run)."""
    frames, height, width = geometry
    spatial = adapter.spatial_compression if family not in ("flux", "sd3") else int(adapter.pipe.vae_scale_factor)
    grid = (height // spatial, width // spatial)
    if adapter.geometry().images:
        return torch.empty(1, LATENT_CHANNELS, *grid, dtype=dtype)
    latent_frames, _ = adapter.geometry().latent_frames(frames)
    if FRAMES_FIRST.get(family, False):
        return torch.empty(1, latent_frames, LATENT_CHANNELS, *grid, dtype=dtype)
    return torch.empty(1, LATENT_CHANNELS, latent_frames, *grid, dtype=dtype)


def run_model(name: str, *, layers: int | None = None, geometry: tuple[int, int, int] | None = None,
              analyses: list[Analysis] | None = None, extra_analyses: Iterable[Analysis] = (),
              cross_check: bool = True) -> dict[str, Any]:
    """Trace one transformer forward of ``name`` (``layers``: at most this many blocks of each
    kind) at ``geometry`` (default: the published native setting) plain and traced, and return
    the measurements. ``analyses`` default to :func:`default_analyses`; ``extra_analyses`` are
    added to them (tests plant a faulty one). ``cross_check``: also measure the plain forward's
    peak with torch's ``MemTracker`` (:func:`memtracker_peak`)."""
    model = real_model(name)
    geometry = tuple(geometry or model.geometry)
    with fake_mode():
        pipe = real_pipeline(name, layers=layers)
        adapter = adapter_for(pipe)
        dtype = adapter.dtype
        layout = adapter.layout_for(*geometry)
        visual = layout.visual_tokens
        step = int(adapter.default_renoise_fraction * NUM_INFERENCE_STEPS)
        with unset_fake_temporarily():  # the schedule is host data
            timesteps = adapter.timesteps_for(NUM_INFERENCE_STEPS, geometry)
            schedule, timestep = [float(t) for t in timesteps], timesteps[step]
        guidance = adapter.default_renoise_guidance
        if guidance is None:
            from vidinterp.trace import _default_guidance

            guidance = _default_guidance(pipe)
        latents = latents_for(adapter, model.family, geometry, dtype)
        denoise = adapter.denoiser(PROMPT, latents, guidance, None)

        plain = measure(lambda: denoise(latents, timestep))
        plain_memtracker = memtracker_peak(lambda: denoise(latents, timestep), pipe.transformer) if cross_check else None

        # the trace's own setup (vidinterp.trace, renoising mode): analyses bound to the context,
        # the runtime with the concept state, the trace installed on the transformer
        names = list(CONCEPTS)
        chosen = list(default_analyses(adapter, layout.frames) if analyses is None else analyses) + list(extra_analyses)
        concepts = adapter.encode_concepts(names, "first")
        context = TraceContext(
            concepts=names, num_layers=len({spec.layer for spec in adapter.site_specs()}),
            num_inference_steps=NUM_INFERENCE_STEPS, timesteps=schedule, model=adapter.model_name,
            locate_prompt_words=lambda: adapter.prompt_words(PROMPT, names, "first"),
        )
        for analysis in chosen:
            analysis.bind(context)
        runtime = Runtime(chosen, steps=[step], concepts=concept_state(adapter, concepts, PROMPT), branch="conditional")
        runtime.cfg_batched = adapter.cfg_batched(guidance)
        with installed(adapter, runtime):
            runtime.pixel_frames = geometry[0]
            runtime.set_step(step, schedule[step])
            traced = measure(lambda: denoise(latents, timestep))
        visits = len(runtime.visited_steps)
        parameters = parameter_count(pipe.transformer)
        weight_bytes = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
        batch = latents.shape[0] * (2 if runtime.cfg_batched else 1)

    nothing = {"numel": 0, "shape": [], "where": "-"}
    by_owner = traced["largest"]
    vidinterp_largest = max((by_owner.get(owner, nothing) for owner in ("vidinterp:processor", "vidinterp:extra")),
                            key=lambda entry: entry["numel"])
    extra_largest = by_owner.get("vidinterp:extra", nothing)
    violations = sorted({(where, numel, shape) for _, where, numel, shape in traced["vidinterp_allocations"]
                         if numel >= visual * visual}, key=lambda item: -item[1])
    sites = len(adapter.site_specs())
    attention = attention_flops(adapter, layout, batch)
    sample = max((getattr(analysis, "silhouette_sample_size", 0) for analysis in chosen
                  if "silhouette" in getattr(analysis, "scores", ())), default=0)
    head_dim = min(spec.head_dim for spec in adapter.site_specs())
    bound = extra_flop_bound(len(names), visual, visual + layout.prompt_tokens, layout.frames, head_dim,
                             min(sample, visual), attention, plain["flops"])
    return {
        "model": name, "model_id": model.model_id, "source": model.source, "family": model.family,
        "layers": layers, "sites": sites, "geometry": list(geometry), "geometry_source": model.geometry_source,
        "parameters": parameters, "published_parameters": model.published_parameters,
        "visual_tokens": visual, "prompt_tokens": layout.prompt_tokens, "batch": batch, "guidance": guidance,
        "analyses": [analysis.name for analysis in chosen], "concepts": names, "step": step, "visited_steps": visits,
        "flops_plain": plain["flops"], "flops_traced": traced["flops"],
        "flop_ratio": traced["flops"] / plain["flops"],
        "flops_attention": attention, "flop_extra_over_attention": (traced["flops"] - plain["flops"]) / attention,
        "flop_ratio_bound": 1 + bound / plain["flops"], "silhouette_points": min(sample, visual),
        "peak_bytes_plain": plain["peak_bytes"], "peak_bytes_traced": traced["peak_bytes"],
        "peak_bytes_plain_memtracker": plain_memtracker,
        "peak_ratio": traced["peak_bytes"] / plain["peak_bytes"],
        "weight_bytes": weight_bytes,
        "peak_total_ratio": (weight_bytes + traced["peak_bytes"]) / (weight_bytes + plain["peak_bytes"]),
        "owner_peak_bytes": traced["owner_peak_bytes"],
        "extra_live_peak_bytes": traced["owner_peak_bytes"].get("vidinterp:extra", 0),
        "largest_vidinterp": vidinterp_largest, "largest_vidinterp_extra": extra_largest,
        "largest_vidinterp_processor": by_owner.get("vidinterp:processor", nothing),
        "largest_model": by_owner.get("model"),
        "largest_vidinterp_over_pp": vidinterp_largest["numel"] / (visual * visual),
        "largest_extra_over_pp": extra_largest["numel"] / (visual * visual),
        "pp_violations": [{"where": where, "numel": numel, "shape": list(shape)} for where, numel, shape in violations],
        "assumed_nonzero": traced["assumed_nonzero"],
        "seconds": {"plain": plain["seconds"], "traced": traced["seconds"]},
    }


def attention_flops(adapter, layout, batch: int) -> int:
    """SDPA FLOPs of one forward over every site (4 * B * H * Sq * Sk * d; joint sites attend
    over the whole sequence, self sites over the visual tokens, cross sites from the visual
    tokens to the prompt)."""
    total = 0
    visual, prompt = layout.visual_tokens, layout.prompt_tokens
    for spec in adapter.site_specs():
        queries, keys = {"joint": (visual + prompt, visual + prompt), "self": (visual, visual),
                         "cross": (visual, prompt)}[spec.kind]
        total += 4 * batch * spec.heads * queries * keys * spec.head_dim
    return total


def extra_flop_bound(concepts: int, visual: int, tokens: int, frames: int, head_dim: int, silhouette_points: int,
                     attention: int, plain: int) -> float:
    """Upper bound on the FLOPs a trace with the default analyses adds to one forward:

    ``(4.5 C/P + (3d + 2F)/(4d) (s/P)^2) * attention + (C/S) * (plain - attention)``

    with ``C`` concepts, ``P`` visual and ``S`` all tokens, ``F`` latent frames, head width
    ``d``, ``s`` silhouette points. Per site of ``H`` heads (attention ``4 H S^2 d >= 4 H P^2
    d``): cross attention, concept attention and QK matching are one ``q . k_c`` pass each
    (``2 H P C d``), GramCol and IMAP two (QK peak and Gram columns; IMAP counted with every
    head though it keeps ``k``), the concept stream's attention ``4 H C (P + C) d``:
    ``18 H C P d = 4.5 (C/P) 4 H P^2 d`` in all. The separation analysis' silhouette takes
    ``H s^2 (3d + 2F)`` (pairwise distances, then their sums per frame). The concept stream runs
    each block's dense layers on ``C`` rows besides the ``S`` of the model: ``C/S`` of the
    non-attention work. The other separation scores and norms are not matmuls and count zero.
    It is reached within ~1% when every analysis reads every site (CogVideoX1.5, whose IMAP has
    no reference layer list); terms of lower order (e.g. the stream recomputing each block's
    modulation from ``temb``) are left out, so tests allow a 10% margin."""
    ratio = 4.5 * concepts / visual + (3 * head_dim + 2 * frames) / (4 * head_dim) * (silhouette_points / visual) ** 2
    return ratio * attention + concepts / tokens * (plain - attention)


# ------------------------------------------------------------------------ table
def _gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f}"


def _shape(entry: dict[str, Any]) -> str:
    """``AxBxC``; ``-`` for none or a scalar (a processor that keeps the stock math allocates none)."""
    return "x".join(str(size) for size in entry["shape"]) if entry["numel"] > 1 else "-"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_model` rows."""
    lines = ["| model | params | frames x H x W | P | batch | plain PFLOP | FLOP ratio traced/plain (bound) | "
             "plain peak act. GiB | peak ratio | analyses+stream live peak GiB | largest vidinterp tensor: "
             "site processor / analyses+stream (elements / PxP) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | | | | could not run: {row['error']} | | | | | |")
            continue
        processor, extra = row["largest_vidinterp_processor"], row["largest_vidinterp_extra"]
        pp = row["visual_tokens"] ** 2
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e9:.2f}B | {'x'.join(map(str, row['geometry']))} | "
            f"{row['visual_tokens']:,} | {row['batch']} | {row['flops_plain'] / 1e15:.2f} | "
            f"{row['flop_ratio']:.5f} ({row['flop_ratio_bound']:.5f}) | {_gb(row['peak_bytes_plain'])} | "
            f"{row['peak_ratio']:.4f} | {_gb(row['extra_live_peak_bytes'])} | {_shape(processor)} ({processor['numel'] / pp:.3f}) / "
            f"{_shape(extra)} ({extra['numel'] / pp:.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(REAL_MODELS), choices=sorted(REAL_MODELS))
    parser.add_argument("--layers", type=int, default=None, help="at most this many blocks of each kind")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        start = time.perf_counter()
        try:
            row = run_model(name, layers=args.layers)
        except Exception as error:  # a model that cannot run on fake tensors is reported, not hidden
            row = {"model": name, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                   "traceback": traceback.format_exc()}
        row["wall_seconds"] = time.perf_counter() - start
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"layers": args.layers, "concepts": list(CONCEPTS), "prompt": PROMPT,
                                    "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if any("error" in row or row["pp_violations"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
