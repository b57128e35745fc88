"""Memory guards: estimate a trace's peak memory before running it, then run, tile or refuse.

Before :func:`vidinterp.trace` touches the model it calls :func:`memory_guard` with the pixel
geometry it will run. The guard estimates, from configs and module attributes only (nothing is
allocated), the peak of each phase of a trace; the phases run one after the other, so the
estimated peak is the largest:

* **text encoding**, the largest text encoder (``T`` the transformer's prompt tokens)::

      text = (TEXT_TOKEN_COPIES * T * max(hidden, feed-forward)
              + TEXT_SCORE_COPIES * heads * T * T) * s_text      # T5's [heads, T, T] position bias

* **the traced transformer call**, one block at a time (``torch.no_grad``)::

      transformer = (TOKEN_COPIES * P + prompt copies * T) * B * D * s   # the block's activations
                  + ANALYSIS_COPIES * (P + S) * D * 4                    # analysed rows, float32
                  + MAP_COPIES * analyses * S * P * 4                    # streaming [S, P] maps
                  + LATENT_COPIES * B * latent elements * 4              # latents, noise, output

  ``P`` visual tokens and ``T`` prompt slots from :meth:`~vidinterp.adapter.Adapter.layout_for`;
  ``B`` rows of one call: 2 when the pipeline batches the CFG branches
  (:meth:`~vidinterp.adapter.Adapter.cfg_batched`), else 1; ``D`` the widest attention site
  (heads x head_dim); ``S`` concept slots; ``s`` the transformer's bytes per element; prompt
  copies: ``TOKEN_COPIES`` for joint attention, ``CROSS_PROMPT_COPIES`` for cross-attention
  models. No ``N x N`` attention matrix is counted: native SDPA (CPU and CUDA) and diffusers'
  backends run fused kernels, and vidinterp's accumulators are ``[S, P]``, never ``P x P`` (a
  math-only attention backend would add ``B * heads * N * N * s``).
* **the VAE**: the encode of a renoised clip, the decode of a generated video::

      vae = VAE_PIXEL_COPIES * pass frames * tile area * C * s_vae    # one pass's activations
          + VAE_OUTPUT_COPIES * frames * height * width * 3 * 4       # the clip in RGB float32

  ``C``: channels per pixel of the full-resolution stage (the decoder's last / the encoder's
  first layer, per pixel of a patchifying VAE's patch); ``VAE_PIXEL_COPIES``:
  ``VIDEO_VAE_PIXEL_COPIES`` or ``IMAGE_VAE_PIXEL_COPIES``; pass frames: the adapter's
  :attr:`~vidinterp.adapter.Adapter.vae_latent_frames_per_pass` when set, else what the VAE
  declares (``num_latent_frames_batch_size`` / ``num_sample_frames_batch_size``; frame-wise
  ``tile_sample_min_num_frames``; one latent frame for a VAE with a frame cache, ``clear_cache``),
  else every frame (conservative); tile area: ``height * width``, or with tiling at most
  ``tile_sample_min_height x tile_sample_min_width`` (``tile_sample_min_size``).

Weights are not counted: they are loaded already, so they are outside the free memory the peak
is compared with.

**Calibration.** Measured peak: every CPU allocation of the whole ``vidinterp.trace`` call, from
the torch profiler's allocation events. On the 8 tiny pipelines of
:func:`vidinterp.testing.tiny_pipeline` (float32; generation and renoising; with and without
batched CFG; native geometry, 2x and 4x the height and width, 3x the frames; 90 runs) the ratio
estimate / measured is 1.11-1.48 (CogVideoX), 1.32-1.40 (HunyuanVideo), 1.11-1.66 (LTX-Video),
1.56-1.91 (Wan, SkyReels-V2), 1.38-3.05 (Flux, SD3), and 1.25-9.7 for Mochi, whose tiny VAE's
memory grows more slowly than its pixels (safe, but up to ~10x over); never below 1.
``tests/test_memory_guards.py`` re-measures four of them and checks ``1 <= ratio <= 3``. The
constants were also checked against real-size architectures with random weights on CPU (see
each constant): they are 1.9-3.6x the copies measured there (4-6x for VAE encoding), so on real
models expect the estimate to be about 2-3x the peak. Not measured: real models on GPU (cuDNN
workspaces, allocator fragmentation).

**Available memory**: ``memory_limit=`` of :func:`vidinterp.trace` (bytes as an ``int``, or a
string such as ``"24GB"``, ``"24GiB"``, ``"512MiB"``; ``"off"`` skips the guard), else the
environment variable ``VIDINTERP_MEMORY_LIMIT`` (same forms), else what the device has free:
on CUDA ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds unused; on CPU
psutil's available memory, else ``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup v2
``memory.max``; on other devices, or when none can be read, the guard is skipped.

**What the guard does.** When the estimate fits: nothing (the run is untouched, bit for bit).
When it fits only with the VAE tiled, the family allows it
(:attr:`~vidinterp.adapter.Adapter.vae_tiling`) and the VAE has ``enable_tiling``: it enables
tiling for the run, says so in one :class:`VAETilingWarning`, and puts every tiling setting of
the VAE back afterwards, also on error. Tiling changes the pixels slightly (tiles are blended),
which is why it is only enabled when needed. Slicing (``enable_slicing``) is never enabled: it
splits the batch, and a trace encodes or decodes one video. Otherwise it raises
:class:`InsufficientMemoryError` (a ``MemoryError``) before anything is allocated (no text
encoded, no processor replaced, no hook registered), naming the estimate per phase, the limit
and where it came from, and the settings that fit (``num_frames=...``, ``height=...,
width=...``, with VAE tiling where available).
"""

from __future__ import annotations

import math
import operator
import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from vidinterp.adapter import Adapter

__all__ = [
    "InsufficientMemoryError",
    "VAETilingWarning",
    "MemoryEstimate",
    "MemoryPlan",
    "ENVIRONMENT_VARIABLE",
    "estimate_memory",
    "available_memory",
    "memory_limit_setting",
    "parse_bytes",
    "format_bytes",
    "memory_guard",
]

#: Environment variable with the memory a trace may use (bytes, ``"24GB"``, ``"off"``).
ENVIRONMENT_VARIABLE = "VIDINTERP_MEMORY_LIMIT"

#: Copies of a call's ``[B, N, D]`` activations a transformer block holds at its peak (residual
#: stream, norm and modulation outputs, q/k/v, attention output, the 4x-wide MLP hidden state and
#: its activation, vidinterp's captured q/k/v/z and concept stream). An untraced CogVideoX block
#: at its real width (48 heads x 64) measures 12.5 on CPU.
TOKEN_COPIES = 24
#: The same for prompt tokens of cross-attention models (``token_order="separate"``), which
#: only pass through the key and value projections of each block.
CROSS_PROMPT_COPIES = 4
#: float32 copies of the analysed rows' visual and concept tokens the analyses make per visit.
ANALYSIS_COPIES = 8
#: float32 ``[S, P]`` maps each analysis keeps or computes per visit (streaming, never ``P x P``).
MAP_COPIES = 4
#: float32 copies of the latents alive during denoising (latents, noise, model input and output,
#: scheduler state).
LATENT_COPIES = 8
#: Copies of the text encoder's ``[T, max(hidden, feed-forward)]`` activations (one prompt at a
#: time; the pipelines encode the negative prompt separately).
TEXT_TOKEN_COPIES = 8
#: Copies of the text encoder's ``[heads, T, T]`` position bias / attention mask (T5 builds one).
TEXT_SCORE_COPIES = 6
#: Copies of one video-VAE pass's full-resolution activation ``[frames, C, height, width]`` held
#: at once (resnet input, norm, activation, convolution output, causal padding and cache frames,
#: the upsampled tensor, CPU convolutions' unfolded input for narrow layers). Real CogVideoX,
#: HunyuanVideo and Wan VAEs (random weights, float32, CPU) measure 15, 12 and 11 decoding
#: and 9, 7 and 10 encoding; the tiny ones up to 38 (8 channels, unfolded convolutions).
VIDEO_VAE_PIXEL_COPIES = 40
#: The same for image VAEs (2-D convolutions): a real Flux/SD3 VAE measures 8.6 decoding, 5.6
#: encoding; the tiny ones up to 12.
IMAGE_VAE_PIXEL_COPIES = 16
#: float32 RGB copies of the whole clip around the VAE (input pixels or decoded chunks, their
#: concatenation, the pipeline's postprocessed array, the returned uint8 video).
VAE_OUTPUT_COPIES = 8


class InsufficientMemoryError(MemoryError):
    """The estimated peak memory of a trace exceeds the memory available to it.

    A :class:`MemoryError` (not a ``ValueError``): the arguments are valid, the machine is too
    small for them. Raised before anything is allocated and before the model is touched.

    Attributes:
        estimate: the :class:`MemoryEstimate`.
        limit: the bytes allowed (``memory_limit``, ``VIDINTERP_MEMORY_LIMIT`` or free memory).
        suggestions: settings that would fit, e.g. ``["num_frames=17", "height=240, width=360"]``.
    """

    def __init__(self, message: str, estimate: "MemoryEstimate | None" = None, limit: int = 0,
                 suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.estimate, self.limit, self.suggestions = estimate, limit, list(suggestions or [])


class VAETilingWarning(UserWarning):
    """The memory guard enabled the VAE's tiling for one trace (and restored it afterwards)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one trace, per phase (see the module docstring for the formulas).

    Attributes:
        geometry: ``(frames, height, width)`` in pixels.
        mode: ``"generation"`` (VAE decode) or ``"renoise"`` (VAE encode).
        batch: rows of one transformer call (2 with batched CFG).
        device: where the pipeline computes.
        dtype: the transformer's dtype.
        text: the text encoders' phase (the largest encoder).
        transformer: the traced transformer call's phase.
        vae: the VAE phase without tiling.
        vae_tiled: the VAE phase with tiling, ``None`` when tiling is not available.
    """

    geometry: tuple[int, int, int]
    mode: str
    batch: int
    device: torch.device
    dtype: torch.dtype
    text: int
    transformer: int
    vae: int
    vae_tiled: int | None

    def peak(self, tiled: bool = False) -> int:
        """The estimated peak: the largest phase, with the VAE tiled or not."""
        vae = self.vae_tiled if tiled and self.vae_tiled is not None else self.vae
        return max(self.text, self.transformer, vae)

    def describe(self, tiled: bool = False) -> str:
        """One line: the peak, the geometry and settings, and each phase."""
        frames, height, width = self.geometry
        vae = f"VAE {'encode' if self.mode == 'renoise' else 'decode'} {format_bytes(self.vae)}"
        if self.vae_tiled is not None and self.vae_tiled < self.vae:
            vae += f" ({format_bytes(self.vae_tiled)} tiled)"
        return (f"about {format_bytes(self.peak(tiled))}{' with the VAE tiled' if tiled else ''} for {frames} "
                f"frame(s) at {height}x{width} ({self.mode}, transformer batch {self.batch}, "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}: text encoder "
                f"{format_bytes(self.text)}, transformer call {format_bytes(self.transformer)}, {vae})")


# ---------------------------------------------------------------------------------------- sizes
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str, name: str = "memory_limit") -> int | Literal["off"]:
    """Bytes from ``"24GB"`` (decimal units KB, MB, GB, TB), ``"24GiB"`` or ``"24G"`` (binary
    units KiB.../K, M, G, T), ``"123456"`` (bytes); ``"off"`` for ``"off"`` (no guard). A
    ``ValueError`` naming ``name`` and the accepted forms otherwise."""
    if text.strip().lower() == "off":
        return "off"
    match = _SIZE.match(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f"{name} must be a size such as '24GB', '24GiB', '512MiB' or a number of bytes, or 'off'; "
                         f"got {text!r}")
    size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ValueError(f"{name} must be a positive size, got {text!r}")
    return size


def format_bytes(size: float) -> str:
    """``1.5 GiB``-style text (binary units, as ``nvidia-smi`` and ``free`` count)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def memory_limit_setting(memory_limit: Any = None) -> int | Literal["off"] | None:
    """Check ``vidinterp.trace``'s ``memory_limit``: ``None`` (default: the environment
    variable, else the free memory), an ``int`` number of bytes (``> 0``; NumPy/torch integer
    scalars too; not ``bool``, not a float), or a size string (:func:`parse_bytes`; ``"off"``
    skips the guard). Returns the bytes, ``"off"`` or ``None``. A ``TypeError`` (wrong type) or
    ``ValueError`` (unreadable or not positive) names the argument and the value."""
    if memory_limit is None:
        return None
    if isinstance(memory_limit, str):
        return parse_bytes(memory_limit)
    if isinstance(memory_limit, (bool, float)):
        raise TypeError(f"memory_limit must be an int number of bytes or a size string such as '24GB', "
                        f"got {type(memory_limit).__name__} {memory_limit!r}")
    try:
        size = operator.index(memory_limit)
    except TypeError:
        raise TypeError(f"memory_limit must be an int number of bytes or a size string such as '24GB', "
                        f"got {type(memory_limit).__name__} {memory_limit!r}") from None
    if size <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes, got {size}")
    return size


def _environment_limit() -> int | Literal["off"] | None:
    text = os.environ.get(ENVIRONMENT_VARIABLE)
    if text is None or not text.strip():
        return None
    return parse_bytes(text, name=ENVIRONMENT_VARIABLE)


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a trace may still allocate on ``device``: CUDA's free memory plus what PyTorch's
    caching allocator reserved but does not use; on CPU the system's available memory (psutil,
    else ``/proc/meminfo``, capped by the cgroup's limit); ``None`` when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = _meminfo_available()
    cgroup = _cgroup_available()
    if available is None:
        return cgroup
    return available if cgroup is None else min(available, cgroup)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """A cgroup v2 limit less what the cgroup uses, reclaimable file cache not counted."""
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as handle:
            used = int(handle.read().strip())
        with open("/sys/fs/cgroup/memory.stat") as handle:
            cache = next((int(line.split()[1]) for line in handle if line.startswith("inactive_file ")), 0)
        return max(int(limit) - used + cache, 0)
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------ estimate
def _bytes_per_element(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _pixel_stage_channels(vae: nn.Module, mode: str) -> int:
    """Channels per pixel of the VAE's full-resolution stage: the inputs of the decoder's last
    convolution or linear layer (the one that writes pixels), or the outputs of the encoder's
    first (the one that reads them), per pixel of the patch a patchifying VAE packs into its
    channels (``channels * 3 / pixel-side channels``). Falls back to the widest layer."""
    part = getattr(vae, "encoder" if mode == "renoise" else "decoder", None) or vae
    layers = [(getattr(child, "in_channels", None) or child.in_features,
               getattr(child, "out_channels", None) or child.out_features)
              for child in part.modules() if isinstance(child, (nn.modules.conv._ConvNd, nn.Linear))]
    if not layers:
        return 512
    inner, pixel_side = (layers[0][1], layers[0][0]) if mode == "renoise" else layers[-1]
    patch = math.isqrt(pixel_side // 3)
    if patch == 0 or pixel_side != 3 * patch * patch:  # not RGB in square patches (e.g. Fourier features)
        return max(max(pair) for pair in layers)
    return max(inner // (patch * patch), 1)


def _vae_pass_frames(adapter: "Adapter", vae: nn.Module, frames: int, mode: str) -> int:
    """Pixel frames the VAE holds in one pass (see the module docstring)."""
    if adapter.geometry().images:
        return 1
    k = max(adapter.geometry().temporal_compression, 1)
    latent = getattr(adapter, "vae_latent_frames_per_pass", None)
    if latent is not None:
        return min(frames, k * int(latent) + 1)
    encoding = mode == "renoise"
    if getattr(vae, "use_framewise_encoding" if encoding else "use_framewise_decoding", None) is False:
        return frames
    batch = getattr(vae, "num_sample_frames_batch_size" if encoding else "num_latent_frames_batch_size", None)
    if isinstance(batch, int) and not isinstance(batch, bool):
        return min(frames, batch + 1 if encoding else k * (batch + 1))
    tile = getattr(vae, "tile_sample_min_num_frames", None)
    if isinstance(tile, int) and getattr(vae, "use_framewise_encoding" if encoding else "use_framewise_decoding", False):
        return min(frames, tile + 1)
    if callable(getattr(vae, "clear_cache", None)):
        return min(frames, k + 1)
    return frames


def _tile_size(vae: nn.Module) -> tuple[int, int] | None:
    height = getattr(vae, "tile_sample_min_height", None) or getattr(vae, "tile_sample_min_size", None)
    width = getattr(vae, "tile_sample_min_width", None) or getattr(vae, "tile_sample_min_size", None)
    if not isinstance(height, int) or not isinstance(width, int):
        return None
    return height, width


def tiling_available(adapter: "Adapter") -> bool:
    """Whether the guard may tile this pipeline's VAE: the family allows it
    (:attr:`~vidinterp.adapter.Adapter.vae_tiling`), the VAE has ``enable_tiling`` and tile
    sizes."""
    vae = getattr(adapter.pipe, "vae", None)
    return (bool(getattr(adapter, "vae_tiling", True)) and vae is not None
            and callable(getattr(vae, "enable_tiling", None)) and _tile_size(vae) is not None)


def _config_value(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text_phase(pipe: Any, prompt_tokens: int) -> int:
    """The largest text encoder's phase: ``TEXT_TOKEN_COPIES * T * max(hidden, feed-forward) * s
    + TEXT_SCORE_COPIES * heads * T * T * s`` with ``T`` the transformer's prompt tokens."""
    tokens = prompt_tokens
    largest = 0
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        config = getattr(encoder, "config", None)
        if config is None:
            continue
        config = getattr(config, "text_config", config)
        hidden = _config_value(config, "hidden_size", "d_model", "n_embd") or 4096
        feed_forward = _config_value(config, "intermediate_size", "d_ff", "n_inner") or 4 * hidden
        heads = _config_value(config, "num_attention_heads", "num_heads", "n_head") or 64
        parameter = next(encoder.parameters(), None) if isinstance(encoder, nn.Module) else None
        element = _bytes_per_element(parameter.dtype) if parameter is not None else 4
        largest = max(largest, (TEXT_TOKEN_COPIES * tokens * max(hidden, feed_forward)
                                + TEXT_SCORE_COPIES * heads * tokens * tokens) * element)
    return largest


def estimate_memory(
    adapter: "Adapter", geometry: tuple[int, int, int], *, mode: str = "generation", cfg_batched: bool = False,
    concept_slots: int = 1, analyses: int = 1,
) -> MemoryEstimate:
    """Estimate the peak memory of a trace of pixel ``geometry`` ``(frames, height, width)``;
    see the module docstring. Reads only configs and module attributes: allocates nothing.

    Args:
        mode: ``"generation"`` (the VAE decodes) or ``"renoise"`` (the VAE encodes the clip).
        cfg_batched: the pipeline stacks the CFG branches in one call (batch 2).
        concept_slots: concept-stream slots (or concepts) ``S``.
        analyses: number of analyses (each may keep an ``[S, P]`` float32 map).
    """
    frames, height, width = (int(size) for size in geometry)
    rules = adapter.geometry()
    layout = adapter.layout_for(frames, height, width)
    batch = 2 if cfg_batched else 1
    visual, prompt = layout.visual_tokens, layout.prompt_tokens
    width_d = max((spec.heads * spec.head_dim for spec in adapter.site_specs()), default=0)
    element = _bytes_per_element(adapter.dtype)
    slots = max(int(concept_slots), 1)
    latent_channels = _config_value(getattr(adapter.transformer, "config", None), "in_channels") or 16
    latent_elements = visual * rules.patch**2 * rules.temporal_patch * latent_channels
    prompt_copies = CROSS_PROMPT_COPIES if adapter.token_order == "separate" else TOKEN_COPIES
    transformer = ((TOKEN_COPIES * visual + prompt_copies * prompt) * batch * width_d * element
                   + ANALYSIS_COPIES * (visual + slots) * width_d * 4
                   + MAP_COPIES * max(int(analyses), 1) * slots * visual * 4
                   + LATENT_COPIES * batch * latent_elements * 4)
    text = _text_phase(adapter.pipe, adapter.prompt_tokens)
    device = adapter.device

    vae = getattr(adapter.pipe, "vae", None)
    if vae is None:
        return MemoryEstimate((frames, height, width), mode, batch, device, adapter.dtype, text, transformer, 0, None)
    channels = _pixel_stage_channels(vae, mode)
    parameter = next(vae.parameters(), None)
    vae_element = _bytes_per_element(parameter.dtype if parameter is not None else torch.float32)
    pass_frames = _vae_pass_frames(adapter, vae, frames, mode)
    copies = IMAGE_VAE_PIXEL_COPIES if rules.images else VIDEO_VAE_PIXEL_COPIES
    output = VAE_OUTPUT_COPIES * frames * height * width * 3 * 4

    def vae_bytes(area: int) -> int:
        return copies * pass_frames * area * channels * vae_element + output

    untiled = vae_bytes(height * width)
    tiled = None
    if tiling_available(adapter):
        tile_height, tile_width = _tile_size(vae)
        tiled = vae_bytes(min(height, tile_height) * min(width, tile_width))
    return MemoryEstimate((frames, height, width), mode, batch, device, adapter.dtype, text, transformer, untiled,
                          tiled)


# --------------------------------------------------------------------------------------- guard
class MemoryPlan:
    """What the guard decided for one trace: a context manager that, when ``tile`` is set,
    enables the VAE's tiling on entry (with one :class:`VAETilingWarning`) and restores every
    tiling setting of the VAE on exit; otherwise it does nothing.

    Attributes:
        estimate: the :class:`MemoryEstimate` (``None`` when the guard is off).
        limit: the bytes available (``None``: unknown or guard off).
        tile: whether the run tiles the VAE.
    """

    def __init__(self, adapter: "Adapter", estimate: MemoryEstimate | None, limit: int | None, tile: bool) -> None:
        self.adapter, self.estimate, self.limit, self.tile = adapter, estimate, limit, tile
        self._saved: dict[str, Any] | None = None

    def __enter__(self) -> "MemoryPlan":
        if not self.tile:
            return self
        vae = self.adapter.pipe.vae
        self._saved = {name: value for name, value in vars(vae).items()
                       if name in ("use_tiling", "use_slicing") or name.startswith("tile_")}
        vae.enable_tiling()
        warnings.warn(
            f"vidinterp: enabled VAE tiling for this trace (estimated peak {format_bytes(self.estimate.peak())}, "
            f"{format_bytes(self.estimate.peak(tiled=True))} tiled, limit {format_bytes(self.limit)}); the VAE's "
            f"tiling settings are restored afterwards", VAETilingWarning, stacklevel=3)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._saved is not None:
            vae = self.adapter.pipe.vae
            for name in [name for name in vars(vae) if name.startswith("tile_") and name not in self._saved]:
                delattr(vae, name)
            for name, value in self._saved.items():
                setattr(vae, name, value)
            self._saved = None


def _valid(adapter: "Adapter", geometry: tuple[int, int, int]) -> bool:
    try:
        adapter.check_geometry(*geometry)
    except ValueError:
        return False
    return True


def _fitting_settings(adapter: "Adapter", estimate: MemoryEstimate, limit: int, estimate_for,
                      tiled: bool) -> list[str]:
    """Settings that would fit ``limit``: the most frames that fit, and the largest size at about
    the same aspect ratio that fits, each valid for the model."""
    frames, height, width = estimate.geometry

    def fits(candidate: tuple[int, int, int]) -> bool:
        return _valid(adapter, candidate) and estimate_for(candidate).peak(tiled) <= limit

    def largest_size(frame_count: int) -> tuple[int, int] | None:
        multiple = adapter.geometry().size_multiple
        for scale in range(99, 0, -1):
            size = (max(int(height * scale / 100) // multiple * multiple, multiple),
                    max(int(width * scale / 100) // multiple * multiple, multiple))
            if size != (height, width) and fits((frame_count, *size)):
                return size
        return None

    suggestions = []
    fewer = next((count for count in range(frames - 1, 0, -1) if fits((count, height, width))), None)
    if fewer is not None:
        suggestions.append(f"num_frames={fewer}")
    size = largest_size(frames)
    if size is not None:
        suggestions.append(f"height={size[0]}, width={size[1]}")
    if not suggestions:
        fewest = next((count for count in range(1, frames) if _valid(adapter, (count, height, width))), None)
        size = None if fewest is None else largest_size(fewest)
        if size is not None:
            suggestions.append(f"num_frames={fewest}, height={size[0]}, width={size[1]}")
    return suggestions


def memory_guard(
    adapter: "Adapter", geometry: tuple[int, int, int], *, mode: str, cfg_batched: bool, concept_slots: int,
    analyses: int, memory_limit: Any = None,
) -> MemoryPlan:
    """Check that a trace of ``geometry`` fits the memory available (see the module docstring)
    and return the :class:`MemoryPlan` to enter around the run. Touches nothing.

    Args:
        memory_limit: as ``vidinterp.trace``'s (:func:`memory_limit_setting`): bytes, a size
            string, ``"off"``, or ``None`` for ``VIDINTERP_MEMORY_LIMIT``, else the free memory.

    Raises:
        InsufficientMemoryError: the estimate does not fit, even with the VAE tiled.
    """
    limit = memory_limit_setting(memory_limit)
    source = f"the limit memory_limit={memory_limit!r}"
    if limit is None:
        limit, source = _environment_limit(), f"the limit {ENVIRONMENT_VARIABLE}={os.environ.get(ENVIRONMENT_VARIABLE)!r}"
    if limit is None:
        device = adapter.device
        limit, source = available_memory(device), f"the memory available on {device}"
    if limit is None or limit == "off":
        return MemoryPlan(adapter, None, None, False)

    def estimate_for(size: tuple[int, int, int]) -> MemoryEstimate:
        return estimate_memory(adapter, size, mode=mode, cfg_batched=cfg_batched, concept_slots=concept_slots,
                               analyses=analyses)

    estimate = estimate_for(tuple(geometry))
    tiled_already = bool(getattr(getattr(adapter.pipe, "vae", None), "use_tiling", False))
    if estimate.peak(tiled=tiled_already) <= limit:
        return MemoryPlan(adapter, estimate, limit, False)
    if not tiled_already and estimate.vae_tiled is not None and estimate.peak(tiled=True) <= limit:
        return MemoryPlan(adapter, estimate, limit, True)
    tiled = tiled_already or estimate.vae_tiled is not None
    suggestions = _fitting_settings(adapter, estimate, limit, estimate_for, tiled)
    if suggestions:
        fits = (f"settings that fit{' (with the VAE tiled, which the guard does when needed)' if tiled else ''}: "
                + " or ".join(suggestions))
    else:
        fits = "no smaller geometry fits; free memory (e.g. pipe.enable_model_cpu_offload()) or raise the limit"
    raise InsufficientMemoryError(
        f"vidinterp.trace would need {estimate.describe(tiled)}, more than {source} ({format_bytes(limit)}); "
        f"{fits}. Nothing was run and the model is unchanged (memory_limit='off' or {ENVIRONMENT_VARIABLE}=off "
        f"skips this check)", estimate, limit, suggestions)
