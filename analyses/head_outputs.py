"""Head outputs: a fixed subsample of every head's visual-token attention outputs, kept for
looking at them (PaCMAP embeddings coloured by frame, IMAP paper Fig. 17:
:func:`vidinterp.plotting.embeddings.head_embeddings`).

For each selected (step, layer) it stores the per-head outputs ``o_x`` (``hook_z``, before the
output projection) of the first analysed row, float32, at a subsample of the visual tokens:

* **Subsampling rule.** The same spatial positions in every latent frame. A frame of ``h x w``
  tokens keeps all of them when ``h*w <= max_tokens_per_frame``; otherwise a regular grid of
  stride ``s`` (the smallest ``s >= ceil(sqrt(h*w / max_tokens_per_frame))`` with
  ``ceil(h/s) * ceil(w/s) <= max_tokens_per_frame``) whose row and column offsets in
  ``0..s-1`` are drawn from ``numpy.random.default_rng(seed)``. So at most
  ``F * max_tokens_per_frame`` tokens are kept, whatever ``P``.
* **Memory.** ``steps x layers x heads x tokens x head_dim x 4`` bytes; before keeping a new
  (step, layer) record, a visit checks the total against ``max_bytes`` and raises a
  ``ValueError`` naming the numbers and the remedies when it would be larger. Nothing of size
  ``P x P`` is formed: a visit gathers ``tokens`` rows of ``[H, P, d]``.

Result (group ``diagnostics``), every name prefixed with the analysis name so that it never
aligns with another diagnostic's ``step``/``layer``/``frame`` (default prefix ``head_outputs``):
``head_outputs`` ``(head_outputs_step, head_outputs_layer, head, head_outputs_token,
head_outputs_channel)`` float32, with the kept tokens' latent frame, row and column as the
coordinates ``head_outputs_frame``, ``head_outputs_y``, ``head_outputs_x`` along
``head_outputs_token``. :func:`vidinterp.plotting.embeddings.head_outputs` reads it back with
plain names ``(step, layer, head, token, channel)`` and token coordinates ``frame``, ``y``,
``x``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from vidinterp.analysis import Analysis
from vidinterp.context import TraceContext
from vidinterp.kernels.transfer import to_device
from vidinterp.layout import TokenLayout
from vidinterp.registry import register_analysis
from vidinterp.selectors import LayerIndices, LayerSelector, StepSelector
from vidinterp.sites import SiteVisit

__all__ = ["HeadOutputs", "subsample_tokens"]


def subsample_tokens(frames: int, height: int, width: int, max_tokens_per_frame: int, seed: int) -> np.ndarray:
    """Indices of the kept visual tokens (frame-major, ``frame * h * w + y * w + x``), int64,
    increasing: the same positions in each of ``frames`` frames of ``height x width`` tokens, on
    the seeded regular grid of the module docstring."""
    if max_tokens_per_frame < 1:
        raise ValueError(f"max_tokens_per_frame must be a positive integer, got {max_tokens_per_frame}")
    if height * width <= max_tokens_per_frame:
        ys, xs = np.arange(height), np.arange(width)
    else:
        stride = math.ceil(math.sqrt(height * width / max_tokens_per_frame))
        while math.ceil(height / stride) * math.ceil(width / stride) > max_tokens_per_frame:
            stride += 1
        offset_y, offset_x = np.random.default_rng(seed).integers(0, stride, size=2)
        ys, xs = np.arange(offset_y, height, stride), np.arange(offset_x, width, stride)
    within = (ys[:, None] * width + xs[None, :]).ravel()
    return (np.arange(frames)[:, None] * height * width + within[None, :]).ravel().astype(np.int64)


@register_analysis
class HeadOutputs(Analysis):
    """Subsampled per-head visual outputs (see the module docstring for the rule and the result).

    Args:
        max_tokens_per_frame: visual tokens kept per latent frame (at most).
        seed: seed of the subsampling grid's offsets.
        max_bytes: bound on the stored outputs, checked before each new (step, layer) record.
        steps: step selector (default: every step the trace analyses).
        layers: layer selector (default: the middle layer, ``num_layers // 2``).
    """

    name = "head_outputs"
    group = "diagnostics"
    requires = (("z", "visual"),)
    min_frames = 2  # outputs are looked at by frame

    def __init__(self, *, max_tokens_per_frame: int = 64, seed: int = 0, max_bytes: int = 2**28,
                 steps: StepSelector | None = None, layers: LayerSelector | None = None) -> None:
        super().__init__(steps=steps, layers=layers)
        if int(max_tokens_per_frame) < 1:
            raise ValueError(f"max_tokens_per_frame must be a positive integer, got {max_tokens_per_frame}")
        if int(max_bytes) < 1:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
        self.max_tokens_per_frame, self.seed, self.max_bytes = int(max_tokens_per_frame), int(seed), int(max_bytes)
        self.middle_layer = layers is None

    def bind(self, context: TraceContext) -> None:
        if self.middle_layer:
            self.layers = LayerIndices([context.num_layers // 2])
        super().bind(context)

    def reset(self) -> None:
        self.records: dict[tuple[int, int], torch.Tensor] = {}  # (step, layer) -> [H, tokens, d] float32
        self.tokens: np.ndarray | None = None  # kept token indices, on the host
        self.device_tokens: torch.Tensor | None = None

    def update(self, visit: SiteVisit) -> None:
        outputs = visit.get("z", "visual")[0]  # [H, P, d], the first analysed row
        if self.tokens is None:
            layout = visit.layout
            self.tokens = subsample_tokens(layout.frames, layout.height, layout.width, self.max_tokens_per_frame,
                                           self.seed)
            self.device_tokens = to_device(torch.from_numpy(self.tokens), outputs.device)
        key = (visit.step, visit.layer)
        self._check_budget(len(self.records) + (key not in self.records), outputs.shape[0], outputs.shape[-1])
        self.records[key] = outputs.index_select(1, self.device_tokens).float()

    def _check_budget(self, records: int, heads: int, channels: int) -> None:
        """Raise before ``records`` (step, layer) records of ``heads x tokens x channels``
        float32 values would exceed ``max_bytes``."""
        needed = records * heads * len(self.tokens) * channels * 4
        if needed > self.max_bytes:
            raise ValueError(
                f"{self.name} would keep {needed / 2**20:.2f} MiB ({records} (step, layer) records x {heads} heads x "
                f"{len(self.tokens)} tokens x {channels} channels, float32), over max_bytes={self.max_bytes} "
                f"({self.max_bytes / 2**20:.2f} MiB): select fewer steps (steps=StepIndices([...])) or layers, "
                f"lower max_tokens_per_frame (now {self.max_tokens_per_frame}), or raise max_bytes"
            )

    def merge(self, other: "HeadOutputs") -> "HeadOutputs":
        """Add the (step, layer) records of another run of the same clip geometry; a (step,
        layer) both runs recorded is a ``ValueError`` (outputs of two runs do not average)."""
        if other.tokens is None:
            return self
        if self.tokens is not None and not np.array_equal(self.tokens, other.tokens):
            raise ValueError(f"cannot merge {self.name} runs that kept different tokens (another clip geometry, "
                             f"max_tokens_per_frame or seed)")
        shared = sorted(set(self.records) & set(other.records))
        if shared:
            raise ValueError(f"both {self.name} runs recorded (step, layer) {shared}: merge runs over other steps "
                             f"or layers")
        self.records.update(other.records)
        self.tokens = self.tokens if self.tokens is not None else other.tokens
        self.layout = self.layout or other.layout
        return self

    def result(self) -> xr.Dataset:
        layout: TokenLayout = self._require_visits()
        steps = sorted({step for step, _ in self.records})
        layers = sorted({layer for _, layer in self.records})
        heads, tokens, channels = next(iter(self.records.values())).shape
        values = np.full((len(steps), len(layers), heads, tokens, channels), np.nan, dtype=np.float32)
        for (step, layer), record in self.records.items():
            values[steps.index(step), layers.index(layer)] = record.cpu().numpy()
        per_frame = layout.height * layout.width
        prefix = f"{self.name}_"
        dims = (f"{prefix}step", f"{prefix}layer", "head", f"{prefix}token", f"{prefix}channel")
        coords = {
            dims[0]: steps, dims[1]: layers, "head": list(range(heads)), dims[3]: self.tokens,
            dims[4]: list(range(channels)),
            f"{prefix}frame": (dims[3], self.tokens // per_frame),
            f"{prefix}y": (dims[3], self.tokens % per_frame // layout.width),
            f"{prefix}x": (dims[3], self.tokens % layout.width),
        }
        if self.context.timesteps:
            coords[f"{prefix}timestep"] = (dims[0], [self.context.timesteps[step] for step in steps])
        description = "per-head visual attention outputs before the output projection, first analysed row"
        variable = xr.DataArray(values, dims=dims, coords=coords, attrs={"description": description})
        return xr.Dataset({self.name: variable})

    def settings(self) -> dict:
        return {**super().settings(), "max_tokens_per_frame": self.max_tokens_per_frame, "seed": self.seed,
                "max_bytes": self.max_bytes}
