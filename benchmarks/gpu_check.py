"""GPU readiness check: plain vs traced transformer forwards of real-size random-weight models.

One shot, a few minutes on one large GPU. For each model it builds the transformer with the
published configuration and random weights directly on the device in the chosen dtype (default
bfloat16), wraps it in a pipeline from :func:`vidinterp.testing.tiny_pipeline` (its tokenizer and
scheduler; the text encoder replaced by a two-layer stand-in of the published output width; the
VAE is never run), and times one denoising step as ``vidinterp.trace`` runs it in renoising mode
(the adapter's ``denoiser``: prompt encoded once outside the timer, schedule index 30 of 50,
guidance 1, prompt ``"a dog runs on the grass"``, concepts ``dog`` and ``grass``):

* ``plain``: the stock transformer, the baseline of every ratio;
* ``four_maps``: ``imap``, ``gramcol``, ``concept_attention`` and ``cross_attention`` (those the
  model's site kinds allow; Wan has no concept stream, so no ``concept_attention``);
* ``default``: :func:`vidinterp.trace.default_analyses` ``(adapter, frames)``.

Traced configurations are set up as ``vidinterp.trace`` sets them up (``TraceContext`` bound to
fresh analyses, ``Runtime`` with the concept stream, ``vidinterp.install.installed``) before the
timer starts; ``Analysis.result()`` is timed separately (``finalize_s``). Each traced output is
compared with the plain one bit for bit.

Models: ``cogvideox-5b`` (THUDM/CogVideoX-5b ``transformer/config.json``: 42 layers, 48 heads x 64,
226 text tokens, rotary; 49 frames at 480x720 = 13 x 30 x 45 = 17,550 visual tokens) and
``wan2.1-14b`` (Wan-AI/Wan2.1-T2V-14B-Diffusers: 40 layers, 40 heads x 128, 512 text tokens;
81 frames at 480x832 = 21 x 30 x 52 = 32,760 visual tokens) when the free device memory allows
(weights x 1.5 + 16 GiB), else skipped with the reason.

Attention: with ``--attention auto`` (default) diffusers' ``flash`` backend
(``transformer.set_attention_backend("flash")``) when ``flash_attn`` is importable and the device
is CUDA, else native SDPA. A model whose stock attention processor ignores the backend (CogVideoX's
calls ``F.scaled_dot_product_attention`` itself) keeps SDPA in ``auto`` mode, so plain and traced
forwards run the same kernel (``--attention flash`` sets it anyway: only the traced forward then
uses flash, and the outputs are no longer bitwise equal). The JSON says which ran.

Measurements per configuration: ``--warmup`` untimed forwards (default 1) then ``--repeats``
timed forwards (default 3), interleaved over configurations. Time: CUDA events around the forward
(``time.perf_counter`` after a synchronisation on other devices); peak memory:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, absolute and above the
allocation at the forward's start (CUDA only; ``null`` elsewhere). Ratios are medians over the
repeats against ``plain``. On CUDA one more traced forward (``default``) runs under
``torch.cuda.set_sync_debug_mode("warn")``: the synchronisations warned about inside analyses'
``observe`` (per site visit; expected 0) and in the whole forward, against a plain forward's.

``--dry-run`` runs the same code on the CPU (or ``--device``) with the tiny pipelines' configs at
their native geometry in float32 (``--dtype`` to change it), in seconds; ``tests/
test_gpu_readiness.py`` runs it and checks the JSON.

Usage::

    python benchmarks/gpu_check.py                    # CUDA, bf16: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --models cogvideox-5b --repeats 5
    python benchmarks/gpu_check.py --dry-run          # CPU, tiny: benchmarks/results/gpu_check_dry_run.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

PROMPT = "a dog runs on the grass"
CONCEPTS = ["dog", "grass"]
FOUR_MAPS = ("imap", "gramcol", "concept_attention", "cross_attention")
CONFIGS = ("plain", "four_maps", "default")
RENOISE_STEP, NUM_INFERENCE_STEPS = 30, 50
GUIDANCE = 1.0
RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30


@dataclass(frozen=True)
class ModelSpec:
    """One model to check.

    Attributes:
        name: short name (JSON key).
        family: vidinterp family (``tiny_pipeline(family, **tiny)`` gives the pipeline shell).
        model_id: the published checkpoint (the transformer's ``_name_or_path``, so model cards
            apply, e.g. IMAP's reference layers for CogVideoX-5B); ``None`` for the tiny configs
            (whose two layers the reference layer lists would miss).
        transformer: the published ``transformer/config.json`` (``None``: the tiny builder's).
        geometry: ``(frames, height, width)`` pixels.
        text_width: text-encoder output width (``None``: the tiny encoder's).
        vae: ``(temporal, spatial)`` compression (``None``: the tiny VAE's).
        tiny: keyword arguments of the tiny builder.
    """

    name: str
    family: str
    model_id: str | None
    transformer: dict[str, Any] | None
    geometry: tuple[int, int, int]
    text_width: int | None = None
    vae: tuple[int, int] | None = None
    tiny: dict[str, Any] = field(default_factory=dict)


#: THUDM/CogVideoX-5b transformer/config.json
COGVIDEOX_5B = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0, flip_sin_to_cos=True,
    freq_shift=0, in_channels=16, out_channels=16, norm_elementwise_affine=True, norm_eps=1e-5, patch_size=2,
    spatial_interpolation_scale=1.875, temporal_compression_ratio=4, temporal_interpolation_scale=1.0,
    text_embed_dim=4096, time_embed_dim=512, timestep_activation_fn="silu", use_learned_positional_embeddings=False,
    num_attention_heads=48, num_layers=42, max_text_seq_length=226, sample_frames=49, sample_height=60,
    sample_width=90, use_rotary_positional_embeddings=True,
)
#: Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json
WAN_14B = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)

REAL = {
    "cogvideox-5b": ModelSpec("cogvideox-5b", "cogvideox", "THUDM/CogVideoX-5b", COGVIDEOX_5B, (49, 480, 720),
                              text_width=4096, vae=(4, 8), tiny=dict(variant="5b")),
    "wan2.1-14b": ModelSpec("wan2.1-14b", "wan", "Wan-AI/Wan2.1-T2V-14B-Diffusers", WAN_14B, (81, 480, 832),
                            text_width=4096, vae=(4, 8), tiny=dict(variant="t2v")),
}
#: the dry run: the same families with the tiny builders' configs at their native geometry
DRY = {
    "cogvideox-5b": ModelSpec("cogvideox-5b", "cogvideox", None, None, (9, 32, 48), tiny=dict(variant="5b")),
    "wan2.1-14b": ModelSpec("wan2.1-14b", "wan", None, None, (9, 32, 48), tiny=dict(variant="t2v")),
}


# ---------------------------------------------------------------------------- device helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize()


def free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------- model
def parameters_of(spec: ModelSpec) -> int:
    """Parameter count of the transformer of ``spec`` (built on the meta device: no memory)."""
    from vidinterp.testing import tiny_pipeline

    cls = type(tiny_pipeline(spec.family, **spec.tiny).transformer)
    with torch.device("meta"):
        return sum(p.numel() for p in cls(**spec.transformer).parameters())


def widened(encoder, **changes):
    """A fresh text encoder of ``encoder``'s class and configuration with ``changes``."""
    config = type(encoder.config)(**{**encoder.config.to_dict(), **changes})
    return type(encoder)(config).eval()


def to_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast ``model`` (in place) as ``from_pretrained(torch_dtype=dtype)`` loads it: floating
    tensors in ``dtype``, except those of its ``_keep_in_fp32_modules`` (e.g. Wan's rotary, time
    embedder and norms), which stay float32 under a half-precision dtype."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    half = dtype in (torch.float16, torch.bfloat16)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        target = torch.float32 if half and any(part in name.split(".") for part in keep) else dtype
        if tensor.dtype != target:
            tensor.data = tensor.data.to(target)


def build(spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    """``(pipe, adapter)``: the tiny pipeline of the family with the published transformer (random
    weights, made on ``device`` in ``dtype``) and a text encoder of the published width."""
    from vidinterp.registry import adapter_for
    from vidinterp.testing import tiny_pipeline

    pipe = tiny_pipeline(spec.family, **spec.tiny)
    if spec.transformer is not None:
        with torch.device(device), default_dtype(dtype):
            torch.manual_seed(0)
            transformer = type(pipe.transformer)(**spec.transformer).eval()
            if "native_geometry" in pipe.transformer.config:  # tiny Wan records its native geometry
                transformer.register_to_config(native_geometry=spec.geometry)
            pipe.transformer = transformer
            if spec.text_width is not None:
                pipe.text_encoder = widened(pipe.text_encoder, d_model=spec.text_width, d_ff=2 * spec.text_width)
        pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = spec.vae
    if spec.model_id:
        pipe.transformer.register_to_config(_name_or_path=spec.model_id)
    pipe.to(device)
    to_dtype(pipe.transformer, dtype)
    pipe.text_encoder.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe, adapter_for(pipe)


def latents_for(spec: ModelSpec, adapter, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Random latents of the geometry, in the layout the adapter's ``denoiser`` takes."""
    frames, height, width = spec.geometry
    config = adapter.transformer.config
    latent_frames = (frames - 1) // adapter.temporal_compression + 1
    rows, columns = height // adapter.spatial_compression, width // adapter.spatial_compression
    channels = int(config.in_channels)
    shape = ((1, latent_frames, channels, rows, columns) if spec.family == "cogvideox"
             else (1, channels, latent_frames, rows, columns))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device, dtype)


def dispatches_attention(adapter) -> bool:
    """Whether the model's stock attention processors honour diffusers' attention backend (they
    call ``dispatch_attention_fn``)."""
    spec = adapter.site_specs()[0]
    processor = adapter.attention_module(spec).processor
    try:
        return "dispatch_attention_fn" in inspect.getsource(type(processor).__call__)
    except (OSError, TypeError):
        return False


def choose_attention(requested: str, adapter, device: torch.device) -> tuple[str, str]:
    """Set the attention backend; returns ``(backend name, note)``."""
    import importlib.util

    has_flash = importlib.util.find_spec("flash_attn") is not None
    dispatching = dispatches_attention(adapter)
    if requested == "native" or (requested == "auto" and not (has_flash and device.type == "cuda")):
        return "native (SDPA)", "" if has_flash else "flash_attn is not installed"
    if requested == "auto" and not dispatching:
        return "native (SDPA)", ("the stock processor calls F.scaled_dot_product_attention itself, so the flash backend "
                                 "would change only the traced forward; SDPA kept for both")
    try:
        adapter.transformer.set_attention_backend("flash")
    except Exception as error:  # noqa: BLE001 - e.g. a flash_attn build diffusers does not accept
        return "native (SDPA)", f"set_attention_backend('flash') failed: {type(error).__name__}: {error}"
    note = "" if dispatching else "the stock processor ignores the backend: the plain forward runs SDPA"
    return "flash", note


# ---------------------------------------------------------------------------- configurations
class Bench:
    """A model, its inputs and one denoising call."""

    def __init__(self, spec: ModelSpec, pipe, adapter, device: torch.device, dtype: torch.dtype) -> None:
        self.spec, self.pipe, self.adapter, self.device = spec, pipe, adapter, device
        self.latents = latents_for(spec, adapter, device, dtype)
        self.timesteps = adapter.timesteps(NUM_INFERENCE_STEPS)
        self.timestep = self.timesteps[RENOISE_STEP]
        self.frames = adapter.layout_for(*spec.geometry).frames
        self.pixel_frames = spec.geometry[0]
        with torch.no_grad():
            self.denoise = adapter.denoiser(PROMPT, self.latents, GUIDANCE, None)
            self.concept_tokens = adapter.encode_concepts(CONCEPTS, "first")

    def analyses(self, config: str) -> list:
        from vidinterp.registry import analysis_classes
        from vidinterp.trace import default_analyses

        if config == "default":
            return default_analyses(self.adapter, self.frames)
        kinds = {spec.kind for spec in self.adapter.site_specs()}
        classes = analysis_classes()
        return [classes[name]() for name in FOUR_MAPS
                if kinds & set(classes[name].site_kinds) and classes[name].min_frames <= self.frames]

    def runtime(self, analyses: list):
        """The runtime of a trace of ``analyses`` at the renoise step, as ``vidinterp.trace``
        sets it up."""
        from vidinterp.arguments import check_analyses_fit
        from vidinterp.trace import analysis_runtime

        check_analyses_fit(analyses, self.adapter, self.frames)
        runtime = analysis_runtime(self.adapter, analyses, list(CONCEPTS), self.concept_tokens, prompt=PROMPT,
                                   timesteps=self.timesteps, steps=[RENOISE_STEP], guidance=GUIDANCE)
        runtime.pixel_frames = self.pixel_frames
        runtime.set_step(RENOISE_STEP, self.timestep)
        return runtime

    @contextmanager
    def configured(self, config: str) -> Iterator[Any]:
        """Install ``config``; yields its runtime (``None`` for ``plain``)."""
        from vidinterp.install import installed

        if config == "plain":
            yield None
            return
        runtime = self.runtime(self.analyses(config))
        with installed(self.adapter, runtime):
            yield runtime

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self.denoise(self.latents, self.timestep)


@dataclass
class Measured:
    analyses: list[str] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    peak_above_start_bytes: list[int] = field(default_factory=list)
    finalize_s: list[float] = field(default_factory=list)
    visits: int = 0
    bitwise_equal: bool = True
    results_finite: bool = True
    result_variables: list[str] = field(default_factory=list)


def timed_forward(bench: Bench, config: str, measured: Measured, reference: torch.Tensor | None,
                  record: bool) -> torch.Tensor:
    device = bench.device
    with bench.configured(config) as runtime:
        visits = _count_visits(runtime)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start_bytes = torch.cuda.memory_allocated(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            output = bench.forward()
            end.record()
            synchronize(device)
            elapsed_ms = start.elapsed_time(end)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            started = time.perf_counter()
            output = bench.forward()
            synchronize(device)
            elapsed_ms = (time.perf_counter() - started) * 1e3
            start_bytes = peak = None
    if runtime is not None:
        started = time.perf_counter()
        results = [analysis.result() for analysis in runtime.analyses]
        finalize = time.perf_counter() - started
        if record:
            measured.finalize_s.append(finalize)
            measured.visits = visits[0]
            measured.analyses = [analysis.name for analysis in runtime.analyses]
            names, finite = [], True
            for result in results:
                for name, variable in result.data_vars.items():
                    names.append(name)
                    if variable.dtype.kind == "f" and not name.startswith("separation"):
                        finite &= bool(math.isfinite(float(abs(variable).max())))
            measured.result_variables, measured.results_finite = names, finite
    if reference is not None:
        measured.bitwise_equal &= bool(torch.equal(output, reference))
    if record:
        measured.times_ms.append(elapsed_ms)
        if peak is not None:
            measured.peak_bytes.append(int(peak))
            measured.peak_above_start_bytes.append(int(peak - start_bytes))
    return output


def _count_visits(runtime) -> list[int]:
    """A one-element list counting the analysed site visits of ``runtime`` (filled as it runs)."""
    count = [0]
    if runtime is None:
        return count
    observe = runtime.observe_site

    def counted(*args, **kwargs):
        count[0] += 1
        return observe(*args, **kwargs)

    runtime.observe_site = counted
    return count


def sync_debug(bench: Bench) -> dict[str, Any] | None:
    """Synchronisations CUDA's sync debug mode warns about in a plain forward, in a traced
    (``default``) forward, and inside the analyses' ``observe`` of that forward (``None`` off
    CUDA: the mode is CUDA's)."""
    if bench.device.type != "cuda":
        return None
    counts: dict[str, Any] = {}
    messages: set[str] = set()
    for config in ("plain", "default"):
        inside = [0]
        with bench.configured(config) as runtime, warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            visits = _count_visits(runtime)
            for analysis in (runtime.analyses if runtime is not None else []):
                analysis.observe = _counting_observe(analysis.observe, log, inside)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                bench.forward()
                synchronize(bench.device)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        found = [str(item.message) for item in log if _is_sync_warning(item)]
        messages.update(message.splitlines()[0][:200] for message in found)
        counts[f"{config}_forward"] = len(found)
        if runtime is not None:
            counts["inside_analyses"] = inside[0]
            counts["site_visits"] = visits[0]
    counts["per_visit"] = counts["inside_analyses"] / max(counts["site_visits"], 1)
    counts["messages"] = sorted(messages)[:10]
    return counts


def _is_sync_warning(item) -> bool:
    return "synchroniz" in str(item.message).lower()


def _counting_observe(observe, log: list, inside: list[int]):
    """``observe`` counting, into ``inside[0]``, the sync warnings it adds to ``log``."""
    def counting(visit):
        before = len(log)
        observe(visit)
        inside[0] += sum(_is_sync_warning(item) for item in log[before:])

    return counting


def summary(measured: Measured, plain: Measured) -> dict[str, Any]:
    median_ms = statistics.median(measured.times_ms)
    out: dict[str, Any] = {
        "analyses": measured.analyses,
        "times_ms": [round(t, 3) for t in measured.times_ms],
        "median_ms": round(median_ms, 3),
        "peak_bytes": max(measured.peak_bytes) if measured.peak_bytes else None,
        "peak_above_start_bytes": max(measured.peak_above_start_bytes) if measured.peak_above_start_bytes else None,
    }
    if measured is not plain:
        out["time_ratio"] = round(median_ms / statistics.median(plain.times_ms), 4)
        out["peak_ratio"] = (round(max(measured.peak_bytes) / max(plain.peak_bytes), 4)
                             if measured.peak_bytes and plain.peak_bytes else None)
        out["peak_above_start_ratio"] = (
            round(max(measured.peak_above_start_bytes) / max(plain.peak_above_start_bytes), 4)
            if measured.peak_above_start_bytes and plain.peak_above_start_bytes else None)
        out["finalize_s"] = round(statistics.median(measured.finalize_s), 4) if measured.finalize_s else None
        out["site_visits"] = measured.visits
        out["bitwise_equal"] = measured.bitwise_equal
        out["results_finite"] = measured.results_finite
        out["result_variables"] = measured.result_variables
    return out


def check_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, attention: str, warmup: int,
                repeats: int, log=print) -> dict[str, Any]:
    entry: dict[str, Any] = {"family": spec.family, "model_id": spec.model_id, "geometry": list(spec.geometry),
                             "config": "published" if spec.transformer is not None else "tiny builder's"}
    if spec.transformer is not None and device.type == "cuda":
        parameters = parameters_of(spec)
        need = parameters * torch.finfo(dtype).bits // 8 * 1.5 + 16 * GIB
        free = free_memory(device)
        entry.update(parameters=parameters, memory_needed_estimate_bytes=int(need), memory_free_bytes=free)
        if free is not None and free < need:
            entry.update(status="skipped", reason=f"needs about {need / GIB:.0f} GiB, {free / GIB:.0f} GiB free")
            return entry
    started = time.perf_counter()
    pipe, adapter = build(spec, device, dtype)
    entry["parameters"] = sum(p.numel() for p in adapter.transformer.parameters())
    backend, note = choose_attention(attention, adapter, device)
    bench = Bench(spec, pipe, adapter, device, dtype)
    layout = adapter.layout_for(*spec.geometry)
    entry.update(build_s=round(time.perf_counter() - started, 2), attention=backend, attention_note=note,
                 dtype=str(dtype).removeprefix("torch."), sites=len(adapter.site_specs()),
                 tokens={"visual": layout.visual_tokens, "prompt": layout.prompt_tokens, "frames": layout.frames,
                         "height": layout.height, "width": layout.width})
    log(f"{spec.name}: built in {entry['build_s']} s ({entry['parameters'] / 1e9:.2f}B parameters), "
        f"{layout.visual_tokens} visual tokens, attention {backend}")
    measured = {config: Measured() for config in CONFIGS}
    reference = timed_forward(bench, "plain", measured["plain"], None, record=False)
    for _ in range(max(warmup, 0)):
        for config in CONFIGS:
            timed_forward(bench, config, measured[config], reference, record=False)
    for repeat in range(repeats):
        for config in CONFIGS:
            timed_forward(bench, config, measured[config], reference, record=True)
        log(f"{spec.name}: repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{config} {measured[config].times_ms[-1]:.1f} ms" for config in CONFIGS))
    entry["configs"] = {config: summary(measured[config], measured["plain"]) for config in CONFIGS}
    entry["sync_debug"] = sync_debug(bench)
    entry["status"] = "ok"
    del bench, pipe, adapter, reference
    release(device)
    return entry


# ---------------------------------------------------------------------------- main
def versions() -> dict[str, Any]:
    import diffusers

    try:
        import flash_attn
        flash = flash_attn.__version__
    except ImportError:
        flash = None
    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "flash_attn": flash, "cuda": torch.version.cuda}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU (seconds)")
    parser.add_argument("--models", default=",".join(REAL), help=f"comma-separated, of {sorted(REAL)}")
    parser.add_argument("--device", default=None, help="default: cuda (cpu for --dry-run)")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 (float32 for --dry-run)")
    parser.add_argument("--attention", default="auto", choices=("auto", "flash", "native"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None,
                        help="keep at most this many transformer blocks of the published configs (quick smoke runs)")
    parser.add_argument("--geometry", default=None,
                        help="FRAMES,HEIGHT,WIDTH pixels instead of each model's native one (quick smoke runs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 for --dry-run)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/gpu_check.json, or gpu_check_dry_run.json)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run (or --device cpu)")
    dtype = getattr(torch, args.dtype or ("float32" if args.dry_run else "bfloat16"))
    threads = args.threads or (1 if args.dry_run else None)
    if threads:
        torch.set_num_threads(threads)
    specs = DRY if args.dry_run else REAL
    if args.layers is not None and not args.dry_run:
        # a truncated model has no model card (its reference layer lists name blocks it lacks)
        specs = {name: dataclasses.replace(spec, model_id=None, transformer={**spec.transformer, "num_layers": min(
            args.layers, spec.transformer["num_layers"])}) for name, spec in specs.items()}
    if args.geometry is not None:
        try:
            geometry = tuple(int(size) for size in args.geometry.split(","))
            assert len(geometry) == 3
        except (ValueError, AssertionError):
            parser.error(f"--geometry takes FRAMES,HEIGHT,WIDTH, got {args.geometry!r}")
        specs = {name: dataclasses.replace(spec, geometry=geometry) for name, spec in specs.items()}
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in specs]
    if unknown:
        parser.error(f"unknown models {unknown}; expected some of {sorted(specs)}")
    out = args.out or RESULTS / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")

    report: dict[str, Any] = {
        "script": "benchmarks/gpu_check.py",
        "dry_run": args.dry_run,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "layers": args.layers if not args.dry_run else None,
        "step": {"renoise_step": RENOISE_STEP, "num_inference_steps": NUM_INFERENCE_STEPS, "guidance": GUIDANCE,
                 "prompt": PROMPT, "concepts": CONCEPTS},
        "versions": versions(),
        "models": {},
    }
    started = time.perf_counter()
    for name in names:
        try:
            report["models"][name] = check_model(specs[name], device, dtype, args.attention, args.warmup, args.repeats)
        except Exception as error:  # noqa: BLE001 - recorded; the other models still run and the JSON is written
            traceback.print_exc()
            report["models"][name] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        release(device)
    report["total_s"] = round(time.perf_counter() - started, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, entry in report["models"].items():
        if entry.get("status") != "ok":
            print(f"{name}: {entry.get('status')} ({entry.get('reason')})")
            continue
        configs = entry["configs"]
        print(f"{name}: plain {configs['plain']['median_ms']:.1f} ms; " + "; ".join(
            f"{config} x{configs[config]['time_ratio']:.3f} time, "
            + (f"x{configs[config]['peak_ratio']:.3f} peak" if configs[config]["peak_ratio"] is not None else "peak n/a")
            + f", bitwise {configs[config]['bitwise_equal']}" for config in CONFIGS[1:]))
        if entry.get("sync_debug"):
            print(f"{name}: sync debug {entry['sync_debug']}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    finished = main()
    sys.exit(0 if all(entry.get("status") in ("ok", "skipped") for entry in finished["models"].values()) else 1)
