"""Fitting one frame to a model's height and width: centre crop (default) or pad, then resize.

* ``"crop"``: cut the largest centred window with the target's aspect ratio out of the frame,
  then resize it to the target (nothing is distorted; the sides or the top and bottom are lost).
* ``"pad"``: resize the whole frame to fit inside the target with its aspect ratio kept, centred
  on a black canvas (nothing is lost; black bars fill the rest).

Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``), rounded back to
``uint8``. Frames are ``uint8 [height, width, 3]`` RGB throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FitMode", "FIT_MODES", "FramePlan", "plan_frame", "apply_plan", "FrameFitter", "resize_frame", "PAD_VALUE"]

FitMode = Literal["crop", "pad"]
FIT_MODES: tuple[str, ...] = ("crop", "pad")
#: Colour of the bars ``"pad"`` adds (black, in every channel).
PAD_VALUE = 0


@dataclass(frozen=True)
class FramePlan:
    """How a ``source`` frame becomes a ``target`` frame; sizes are ``(height, width)`` pixels.

    Attributes:
        source, target: frame sizes.
        mode: ``"crop"`` or ``"pad"``.
        window: ``(top, left, height, width)`` of the source kept (the whole frame for ``"pad"``).
        placed: ``(top, left, height, width)`` where the resized window lands in the target (the
            whole target for ``"crop"``).
    """

    source: tuple[int, int]
    target: tuple[int, int]
    mode: FitMode
    window: tuple[int, int, int, int]
    placed: tuple[int, int, int, int]

    @property
    def identity(self) -> bool:
        """The frame passes unchanged."""
        return self.source == self.target

    def describe(self) -> str:
        """A few words for notices, e.g. ``"centre crop to 720x1080, resize"``."""
        if self.identity:
            return "size kept"
        if self.mode == "crop":
            cut = self.window[2:] != self.source
            return (f"centre crop to {self.window[2]}x{self.window[3]}, resize" if cut else "resize (same aspect)")
        padded = self.placed[2:] != self.target
        return (f"resize to {self.placed[2]}x{self.placed[3]}, pad with black to {self.target[0]}x{self.target[1]}"
                if padded else "resize (same aspect)")


def plan_frame(source: tuple[int, int], target: tuple[int, int], mode: FitMode = "crop") -> FramePlan:
    """The :class:`FramePlan` that fits a ``source`` ``(height, width)`` frame to ``target``."""
    if mode not in FIT_MODES:
        raise ValueError(f"fit must be one of {list(FIT_MODES)}, got {mode!r}")
    (h, w), (th, tw) = (int(source[0]), int(source[1])), (int(target[0]), int(target[1]))
    if min(h, w, th, tw) < 1:
        raise ValueError(f"frame sizes must be positive, got source {h}x{w} and target {th}x{tw}")
    if mode == "crop":
        if w * th > tw * h:  # source wider than the target: cut the sides
            width = min(w, max(1, round(h * tw / th)))
            window = (0, (w - width) // 2, h, width)
        else:  # taller (or equal): cut the top and bottom
            height = min(h, max(1, round(w * th / tw)))
            window = ((h - height) // 2, 0, height, w)
        return FramePlan((h, w), (th, tw), mode, window, (0, 0, th, tw))
    scale = min(th / h, tw / w)
    height, width = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    return FramePlan((h, w), (th, tw), mode, (0, 0, h, w), ((th - height) // 2, (tw - width) // 2, height, width))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [h, w, 3]`` -> ``uint8 [size[0], size[1], 3]``, bilinear with antialiasing."""
    if frame.shape[:2] == tuple(size):
        return frame
    array = np.ascontiguousarray(frame)
    if not array.flags.writeable:  # e.g. PIL's arrays; torch wants writable memory
        array = array.copy()
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].float()
    tensor = F.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def apply_plan(plan: FramePlan, frame: np.ndarray) -> np.ndarray:
    """Fit one ``uint8 [h, w, 3]`` frame (of size ``plan.source``) to ``uint8 [H, W, 3]``."""
    if plan.identity:
        return frame
    top, left, height, width = plan.window
    resized = resize_frame(frame[top:top + height, left:left + width], plan.placed[2:])
    if plan.mode == "crop":
        return resized
    canvas = np.full((*plan.target, 3), PAD_VALUE, dtype=np.uint8)
    top, left, height, width = plan.placed
    canvas[top:top + height, left:left + width] = resized
    return canvas


class FrameFitter:
    """Callable fitting frames of any size to ``target`` ``(height, width)`` with ``mode``; the
    plan of each source size is made once (a stream may change size mid-way)."""

    def __init__(self, target: tuple[int, int], mode: FitMode = "crop"):
        if mode not in FIT_MODES:
            raise ValueError(f"fit must be one of {list(FIT_MODES)}, got {mode!r}")
        self.target = (int(target[0]), int(target[1]))
        self.mode: FitMode = mode
        self._plans: dict[tuple[int, int], FramePlan] = {}

    def plan(self, source: tuple[int, int]) -> FramePlan:
        """The plan for frames of ``source`` ``(height, width)``."""
        source = (int(source[0]), int(source[1]))
        if source not in self._plans:
            self._plans[source] = plan_frame(source, self.target, self.mode)
        return self._plans[source]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """``uint8 [h, w, 3]`` -> ``uint8 [H, W, 3]``."""
        return apply_plan(self.plan(frame.shape[:2]), frame)
