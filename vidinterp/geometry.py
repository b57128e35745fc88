"""Video geometry from what an adapter declares: which pixel sizes a model accepts, and the token
grid and frame spans of a video.

An adapter describes its model with one :class:`Geometry` (compression factors, patch sizes,
limits, all read from the model's config); the core derives everything else from it: the check
of a requested ``(frames, height, width)`` with an error that names the expected values, the
token frames and grid, and the pixel frames every token frame covers. Images are videos of one
frame (``temporal_compression = 1``, ``images=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidinterp.layout import causal_frame_spans

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """Pixel geometry rules of one model.

    Attributes:
        model: the model's name in error messages (e.g. ``"CogVideoX"``).
        native: ``(frames, height, width)`` pixels the model is made for.
        temporal_compression: pixel frames per latent frame ``k`` (causal VAE: ``k*n + 1``
            frames).
        spatial_compression: pixels per latent cell side.
        patch: latent cells per token side.
        temporal_patch: latent frames per token frame.
        pixel_multiple: a further multiple heights and widths must have (e.g. HunyuanVideo's
            pipeline wants 16); the effective multiple is the lcm with the token cell.
        max_grid: largest token rows/columns (``None``: no limit; e.g. a rotary table's length).
        max_token_frames: largest number of token frames (``None``: no limit).
        fixed_size: height and width must be the native ones (learned positional embeddings).
        at_most_native_size: height and width may not exceed the native ones.
        images: the model takes single images (``frames`` must be 1).
        pad_latent_frames: the pipeline pads the latent frame count up to a multiple of
            ``temporal_patch`` with leading frames (CogVideoX 1.5) instead of requiring it.
    """

    model: str
    native: tuple[int, int, int]
    temporal_compression: int
    spatial_compression: int
    patch: int
    temporal_patch: int = 1
    pixel_multiple: int = 1
    max_grid: int | None = None
    max_token_frames: int | None = None
    fixed_size: bool = False
    at_most_native_size: bool = False
    images: bool = False
    pad_latent_frames: bool = False

    @property
    def token_cell(self) -> int:
        """Pixels per token side."""
        return self.spatial_compression * self.patch

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this."""
        return math.lcm(self.token_cell, self.pixel_multiple)

    def latent_frames(self, frames: int) -> tuple[int, int]:
        """``(latent frames, leading padding frames)`` of a ``frames``-frame video."""
        if self.images:
            return 1, 0
        latent = (frames - 1) // self.temporal_compression + 1
        padding = (-latent) % self.temporal_patch if self.pad_latent_frames else 0
        return latent + padding, padding

    def tokens(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(token frames, rows, columns)`` of a video (checked)."""
        self.check(frames, height, width)
        latent, _ = self.latent_frames(frames)
        return latent // self.temporal_patch, height // self.token_cell, width // self.token_cell

    def frame_spans(self, frames: int) -> tuple[tuple[int, int], ...]:
        """Inclusive ``(first, last)`` pixel frames of every token frame of a ``frames``-frame
        video."""
        if self.images:
            return ((0, 0),)
        latent, padding = self.latent_frames(frames)
        return causal_frame_spans(latent // self.temporal_patch, self.temporal_compression, self.temporal_patch, padding)

    def check(self, frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming every problem and the expected values."""
        problems = self._frame_problems(frames) + self._size_problems(height, width)
        if problems:
            native = self.native
            unit = "frame" if self.images else "frames"
            raise ValueError(
                f"invalid {'image' if self.images else 'video'} geometry for {self.model}: " + "; ".join(problems)
                + f" (this model's native geometry: {native[0]} {unit} at {native[1]}x{native[2]})"
            )

    def _frame_problems(self, frames: int) -> list[str]:
        if self.images:
            return [] if frames == 1 else [f"num_frames must be 1 (an image is a video of one frame), got {frames}"]
        k, patch_t = self.temporal_compression, self.temporal_patch
        if frames < 1 or (frames - 1) % k:
            return [f"num_frames must be {k}*n + 1 (e.g. {k * ((max(frames, 1) - 1) // k) + 1}), got {frames}"]
        latent = (frames - 1) // k + 1
        if latent % patch_t and not self.pad_latent_frames:
            nearest = k * (patch_t * math.ceil(latent / patch_t) - 1) + 1
            return [f"num_frames must give a latent frame count (num_frames - 1) / {k} + 1 divisible by the temporal "
                    f"patch {patch_t} (e.g. {nearest}), got {frames} -> {latent} latent frames"]
        token_frames = self.latent_frames(frames)[0] // patch_t
        if self.max_token_frames is not None and token_frames > self.max_token_frames:
            return [f"num_frames gives {token_frames} token frames, more than the model's {self.max_token_frames}"]
        return []

    def _size_problems(self, height: int, width: int) -> list[str]:
        problems = []
        multiple = self.size_multiple
        for name, size, native in (("height", height, self.native[1]), ("width", width, self.native[2])):
            if size < multiple or size % multiple:
                problems.append(f"{name} must be a positive multiple of {multiple} pixels, got {size}")
            elif self.fixed_size and size != native:
                problems.append(f"{name} must be {native} (learned positional embeddings), got {size}")
            elif self.at_most_native_size and size > native:
                problems.append(f"{name} must be at most {native} (the model's positional grid), got {size}")
            elif self.max_grid is not None and size // self.token_cell > self.max_grid:
                problems.append(f"{name} must be at most {self.max_grid * self.token_cell} pixels "
                                f"({self.max_grid} tokens), got {size}")
        return problems
