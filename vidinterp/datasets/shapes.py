"""Synthetic "coloured shapes" video clips with exact ground truth.

The clips are tiny (by default 16 frames of 64x64 pixels) and fully determined by a seed, so
saliency maps of a video model can be scored against *exact* answers to "where is the red
object", "where is the circle", "where is the thing moving left", frame by frame.

Conventions used throughout this module:

* Arrays of frames are ``uint8 [F, H, W, 3]`` RGB; masks are ``bool``.
* Pixel coordinates are ``(x, y)`` = (column, row) in pixels; the *centre* of pixel
  ``frames[t, r, c]`` is at ``(x=c, y=r)``, so the image covers ``[-0.5, W - 0.5]`` by
  ``[-0.5, H - 0.5]``. ``y`` grows downwards, so "up" is ``-y``.
* Shapes are rasterised without anti-aliasing: a pixel belongs to a shape when its centre lies
  inside the shape. Every object has exactly one flat colour from :data:`COLORS`.
* Objects are drawn in list order (index 0 first, i.e. at the back); ``masks`` hold the *visible*
  pixels of each object, so a pixel is in at most one object's mask and a mask pixel always
  has that object's colour.
* Motion is a constant velocity during a half-open frame interval ``[start, stop)``:
  ``position[t + 1] = position[t] + velocity`` exactly when ``start <= t < stop``. The label
  ``moving[k, t]`` is ``True`` when object ``k`` has a non-zero velocity at frame ``t``, i.e.
  when its position at ``t + 1`` differs from that at ``t`` (for the last frame, the position one
  step past the clip is used), so ``moving`` is ``True`` on exactly ``[start, stop)``.
* Border policy is **clamp**, never bounce (a bounce would contradict the caption's direction):
  randomly generated objects get a start position and a speed such that their whole path fits
  in the frame, so they never touch the clamp. Hand-specified objects (:func:`render_clip`) whose
  path would leave the frame are clamped at the border and stop there; ``moving`` is then
  ``False`` from the frame at which they stop.

Captions use a fixed word-level vocabulary (:data:`VOCABULARY`), e.g.
``"a red circle moving left and a blue square"``.

Example::

    config = ShapesConfig(num_frames=16, height=64, width=64)
    clip = generate_clip(config, seed=0)
    clip.frames.shape, clip.masks.shape, clip.caption
    manifest = write_dataset("out/shapes", generate_dataset(config, n=100, seed=0))
    for entry in read_manifest(manifest):
        truth = load_clip_ground_truth(entry)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import av
import numpy as np

__all__ = [
    "CLASSIC_SHAPES",
    "COLORS",
    "DIRECTIONS",
    "FUNCTION_WORDS",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "SHAPES",
    "VOCABULARY",
    "CaptionVocabularyError",
    "ColorName",
    "Direction",
    "ManifestEntry",
    "ShapeName",
    "ShapeObject",
    "ShapesClip",
    "ShapesConfig",
    "ShapesGroundTruth",
    "check_caption",
    "clip_seed",
    "generate_clip",
    "generate_dataset",
    "load_clip",
    "load_clip_ground_truth",
    "make_caption",
    "read_manifest",
    "read_video",
    "render_clip",
    "write_dataset",
]

ShapeName = Literal["circle", "square", "triangle", "diamond", "ring", "bar", "column"]
ColorName = Literal["red", "green", "blue", "yellow", "white", "purple"]
Direction = Literal["left", "right", "up", "down"]

SHAPES: tuple[str, ...] = get_args(ShapeName)
"""Object nouns, in vocabulary order. In a ``size`` x ``size`` bounding box: ``circle``,
``square``, ``diamond``, ``triangle`` (apex up) fill it; ``ring`` is a circle with a hole (width
``max(2, size / 4)`` pixels); ``bar`` is ``size`` wide and ``size / 3`` tall, ``column`` the
transpose. The last three differ at a coarse scale (a hole, an orientation), which a model
that sees 4x4-pixel patches can tell apart sooner than edge curvature."""

CLASSIC_SHAPES: tuple[str, ...] = SHAPES[:4]
"""The filled shapes (circle, square, triangle, diamond): what :class:`ShapesConfig` samples by default."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
}
"""Colour words and the exact RGB value (0..255) each object of that colour is painted with."""

DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
"""Motion words and their unit step ``(dx, dy)`` in pixel coordinates (``y`` grows downwards)."""

FUNCTION_WORDS: tuple[str, ...] = ("a", "and", "moving")
"""Non-concept words captions use: ``"a <colour> <shape> [moving <direction>] [and ...]"``."""

VOCABULARY: tuple[str, ...] = FUNCTION_WORDS + tuple(COLORS) + SHAPES + tuple(DIRECTIONS)
"""Every word a caption can contain, in a fixed order (use as a word-level tokenizer's vocab)."""

MANIFEST_FORMAT = "vidinterp.shapes"
MANIFEST_VERSION = 1

_MAX_SAMPLING_ATTEMPTS = 200
_MIN_SIZE = 4  # pixels; every shape of at least this size covers at least one pixel centre


class CaptionVocabularyError(ValueError):
    """A caption contains words outside :data:`VOCABULARY`."""


def check_caption(caption: str) -> list[str]:
    """Check that ``caption`` only uses :data:`VOCABULARY` and return its words.

    Words are separated by whitespace and are case-sensitive (all vocabulary words are lower
    case; there is no punctuation).

    Raises:
        CaptionVocabularyError: if the caption is empty or has an out-of-vocabulary word; the
            message lists the offending words and the whole vocabulary.
    """
    words = caption.split()
    if not words:
        raise CaptionVocabularyError(
            f"caption is empty; captions are built from the vocabulary {list(VOCABULARY)}"
        )
    unknown = sorted({w for w in words if w not in VOCABULARY})
    if unknown:
        raise CaptionVocabularyError(
            f"caption {caption!r} uses words outside the shapes vocabulary: {unknown}. "
            f"Allowed words (lower case, whitespace-separated, no punctuation): {list(VOCABULARY)}"
        )
    return words


@dataclass(frozen=True)
class ShapeObject:
    """One object of a clip: what it is, where it starts and how it moves.

    Used both to specify hand-made clips (:func:`render_clip`) and as per-object metadata of
    generated clips.

    Attributes:
        shape: object noun, one of :data:`SHAPES`.
        color: colour word, one of :data:`COLORS`.
        size: side / diameter of the shape's bounding box, pixels (>= 4).
        position: centre ``(x, y)`` of the bounding box at frame 0, pixels.
        direction: one of :data:`DIRECTIONS`, or ``None`` for a static object.
        speed: pixels per frame (> 0 for a moving object, 0 for a static one).
        motion_frames: half-open frame interval ``(start, stop)`` during which the object moves;
            ``None`` means the whole clip. Must be ``None`` for a static object.
    """

    shape: str
    color: str
    size: int
    position: tuple[float, float]
    direction: str | None = None
    speed: float = 0.0
    motion_frames: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ShapeObject.shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"ShapeObject.color must be one of {list(COLORS)}, got {self.color!r}")
        if int(self.size) != self.size or self.size < _MIN_SIZE:
            raise ValueError(f"ShapeObject.size must be an integer >= {_MIN_SIZE} pixels, got {self.size!r}")
        if len(self.position) != 2 or not all(math.isfinite(v) for v in self.position):
            raise ValueError(f"ShapeObject.position must be a finite (x, y) pair, got {self.position!r}")
        if self.direction is None:
            if self.speed != 0 or self.motion_frames is not None:
                raise ValueError(
                    "a static ShapeObject (direction=None) must have speed=0 and motion_frames=None, "
                    f"got speed={self.speed!r}, motion_frames={self.motion_frames!r}"
                )
            return
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"ShapeObject.direction must be one of {list(DIRECTIONS)} or None, got {self.direction!r}"
            )
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(
                f"a moving ShapeObject needs a finite speed > 0 pixels/frame, got {self.speed!r}"
            )
        if self.motion_frames is not None:
            start, stop = self.motion_frames
            if not (0 <= start < stop):
                raise ValueError(
                    f"ShapeObject.motion_frames must be (start, stop) with 0 <= start < stop, "
                    f"got {self.motion_frames!r}"
                )

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The exact RGB value (0..255) the object is painted with."""
        return COLORS[self.color]

    @property
    def motion_word(self) -> str:
        """The object's direction word, or ``"static"`` for a static object."""
        return self.direction if self.direction is not None else "static"

    @property
    def phrase(self) -> str:
        """Caption phrase, e.g. ``"a red circle moving left"`` or ``"a blue square"``."""
        motion = f" moving {self.direction}" if self.direction is not None else ""
        return f"a {self.color} {self.shape}{motion}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (also carries the derived ``rgb`` and ``motion_word``)."""
        return {
            "shape": self.shape,
            "color": self.color,
            "rgb": list(self.rgb),
            "size": int(self.size),
            "position": [float(v) for v in self.position],
            "direction": self.direction,
            "speed": float(self.speed),
            "motion_frames": None if self.motion_frames is None else [int(v) for v in self.motion_frames],
            "motion_word": self.motion_word,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeObject:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        frames = data.get("motion_frames")
        return cls(
            shape=data["shape"],
            color=data["color"],
            size=int(data["size"]),
            position=(float(data["position"][0]), float(data["position"][1])),
            direction=data.get("direction"),
            speed=float(data.get("speed", 0.0)),
            motion_frames=None if frames is None else (int(frames[0]), int(frames[1])),
        )


def make_caption(objects: Sequence[ShapeObject]) -> str:
    """Caption of a clip: object phrases in draw order joined by ``" and "``.

    Example: ``"a red circle moving left and a blue square"``.
    """
    return " and ".join(obj.phrase for obj in objects)


def _unique(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


@dataclass
class ShapesGroundTruth:
    """Exact per-object ground truth of a clip.

    Attributes:
        objects: the clip's objects in draw order (index 0 at the back).
        masks: ``bool [objects, F, H, W]``, the visible (unoccluded) pixels of each object.
        moving: ``bool [objects, F]``, whether each object has a non-zero velocity at each frame.
        tracks: ``float32 [objects, F, 2]``, bounding-box centre ``(x, y)`` of each object, pixels.
    """

    objects: tuple[ShapeObject, ...]
    masks: np.ndarray
    moving: np.ndarray
    tracks: np.ndarray

    @property
    def caption(self) -> str:
        """The clip's caption (see :func:`make_caption`)."""
        return make_caption(self.objects)

    @property
    def nouns(self) -> list[str]:
        """Distinct object nouns, in caption order."""
        return _unique(obj.shape for obj in self.objects)

    @property
    def colors(self) -> list[str]:
        """Distinct colour words, in caption order."""
        return _unique(obj.color for obj in self.objects)

    @property
    def motion_words(self) -> list[str]:
        """Distinct direction words of moving objects, in caption order (static ones add none)."""
        return _unique(obj.direction for obj in self.objects if obj.direction is not None)

    @property
    def concepts(self) -> list[str]:
        """All concept words of the clip: nouns, then colours, then motion words."""
        return self.nouns + self.colors + self.motion_words

    def concept_mask(self, word: str) -> np.ndarray:
        """Ground-truth region of a concept word, ``bool [F, H, W]``.

        * a noun or colour word: visible pixels of every object with that shape / colour;
        * a direction word: visible pixels of objects with that direction, on frames where they
          are actually moving;
        * ``"moving"``: visible pixels of any object on frames where it is moving.

        A word of the vocabulary that is absent from the clip gives an all-``False`` mask.

        Raises:
            ValueError: if ``word`` is not a concept word of :data:`VOCABULARY`.
        """
        if word in SHAPES:
            selected = np.array([obj.shape == word for obj in self.objects], dtype=bool)
            per_frame = np.ones_like(self.moving)
        elif word in COLORS:
            selected = np.array([obj.color == word for obj in self.objects], dtype=bool)
            per_frame = np.ones_like(self.moving)
        elif word in DIRECTIONS or word == "moving":
            selected = np.array(
                [obj.direction is not None and word in (obj.direction, "moving") for obj in self.objects],
                dtype=bool,
            )
            per_frame = self.moving
        else:
            concept_words = ["moving", *SHAPES, *COLORS, *DIRECTIONS]
            raise ValueError(f"{word!r} is not a concept word; expected one of {concept_words}")
        weights = per_frame & selected.reshape(-1, 1)  # [objects, F]
        return np.any(self.masks & weights[:, :, None, None], axis=0)


@dataclass
class ShapesClip(ShapesGroundTruth):
    """A rendered clip with its ground truth (see :class:`ShapesGroundTruth` for the other fields).

    Attributes:
        frames: ``uint8 [F, H, W, 3]`` RGB frames.
        seed: seed that :func:`generate_clip` regenerates this clip from (same config), or
            ``None`` for hand-specified clips.
    """

    frames: np.ndarray
    seed: int | None = None

    @property
    def num_frames(self) -> int:
        """F, the number of frames."""
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        """H, frame height in pixels."""
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        """W, frame width in pixels."""
        return int(self.frames.shape[2])


def _check_rgb(value: Sequence[int], name: str) -> None:
    if len(value) != 3 or not all(int(v) == v and 0 <= v <= 255 for v in value):
        raise ValueError(f"{name} must be an (r, g, b) triple of integers in 0..255, got {value!r}")


@dataclass(frozen=True)
class ShapesConfig:
    """Settings of the random clip generator.

    Attributes:
        num_frames: frames per clip, F (>= 2).
        height: frame height H, pixels.
        width: frame width W, pixels.
        num_objects: inclusive ``(min, max)`` number of objects per clip (>= 1). Objects in a
            clip have distinct (shape, colour) pairs, so captions are unambiguous.
        motion_probability: probability that an object moves (0..1).
        partial_motion_probability: probability that a moving object moves only during a random
            sub-interval of the clip (at least 2 frames long, never the whole clip) instead of
            throughout (0..1).
        size_range: inclusive ``(min, max)`` bounding-box size, integer pixels (min >= 4).
        speed_range: ``(min, max)`` speed of moving objects, pixels per frame. The sampled speed
            is lowered when needed for the whole path to fit in the frame, but never below min.
        shapes: object nouns to sample from (subset of :data:`SHAPES`; default
            :data:`CLASSIC_SHAPES`).
        colors: colour words to sample from (subset of :data:`COLORS`).
        background_color: RGB of the plain background (used unless a background array is given
            to :func:`generate_clip`); must differ from every colour in ``colors``.
        min_visible_fraction: every object must keep at least this fraction of its pixels
            visible (not occluded) at every frame (0..1); layouts are resampled until it holds.
        position_spread: share (0..1) of the allowed range, centred on its middle, from which an
            object's start is drawn, per axis. 1 (default): anywhere its whole path fits; 0: the
            path is centred in the frame, so a static object sits in the middle and a moving one
            passes through it. Below 1 the caption says more about the pixels (a direction word
            fixes the path, a noun the silhouette), so those words carry more of a denoising loss.
        seed: default seed of :func:`generate_clip` / :func:`generate_dataset`.
    """

    num_frames: int = 16
    height: int = 64
    width: int = 64
    num_objects: tuple[int, int] = (1, 3)
    motion_probability: float = 0.5
    partial_motion_probability: float = 0.25
    size_range: tuple[int, int] = (10, 20)
    speed_range: tuple[float, float] = (1.0, 3.0)
    shapes: tuple[str, ...] = CLASSIC_SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    background_color: tuple[int, int, int] = (0, 0, 0)
    min_visible_fraction: float = 0.5
    position_spread: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"ShapesConfig.{name} must be an integer, got {value!r}")
        if self.num_frames < 2:
            raise ValueError(f"ShapesConfig.num_frames must be >= 2, got {self.num_frames}")
        if self.seed < 0:
            raise ValueError(f"ShapesConfig.seed must be >= 0, got {self.seed}")
        lo_n, hi_n = self.num_objects
        if not (1 <= lo_n <= hi_n):
            raise ValueError(
                f"ShapesConfig.num_objects must be (min, max) with 1 <= min <= max, got {self.num_objects!r}"
            )
        for name in ("motion_probability", "partial_motion_probability", "min_visible_fraction", "position_spread"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ShapesConfig.{name} must be in [0, 1], got {value!r}")
        if self.partial_motion_probability > 0 and self.num_frames < 3:
            raise ValueError(
                "ShapesConfig.partial_motion_probability > 0 needs num_frames >= 3 "
                f"(a proper sub-interval of >= 2 frames), got num_frames={self.num_frames}"
            )
        lo_s, hi_s = self.size_range
        if not (isinstance(lo_s, int) and isinstance(hi_s, int) and _MIN_SIZE <= lo_s <= hi_s):
            raise ValueError(
                f"ShapesConfig.size_range must be integer (min, max) with {_MIN_SIZE} <= min <= max, "
                f"got {self.size_range!r}"
            )
        if hi_s >= min(self.height, self.width):
            raise ValueError(
                f"ShapesConfig.size_range max ({hi_s}) must be < min(height, width) = "
                f"{min(self.height, self.width)}"
            )
        lo_v, hi_v = self.speed_range
        if not (0 < lo_v <= hi_v and math.isfinite(hi_v)):
            raise ValueError(
                f"ShapesConfig.speed_range must be (min, max) with 0 < min <= max, got {self.speed_range!r}"
            )
        room = min(self.height, self.width) - hi_s
        if lo_v * self.num_frames > room:
            raise ValueError(
                "ShapesConfig: a largest object moving for the whole clip at the minimum speed must fit "
                f"in the frame: need speed_range[0] * num_frames ({lo_v} * {self.num_frames}) <= "
                f"min(height, width) - size_range[1] ({room}); lower the speed, frames or size"
            )
        for name, allowed in (("shapes", SHAPES), ("colors", tuple(COLORS))):
            chosen = getattr(self, name)
            bad = [v for v in chosen if v not in allowed]
            if not chosen or bad or len(set(chosen)) != len(chosen):
                raise ValueError(
                    f"ShapesConfig.{name} must be a non-empty tuple of distinct values from {list(allowed)}, "
                    f"got {chosen!r}"
                )
        if hi_n > len(self.shapes) * len(self.colors):
            raise ValueError(
                f"ShapesConfig.num_objects max ({hi_n}) exceeds the number of distinct (shape, colour) "
                f"pairs ({len(self.shapes)} shapes x {len(self.colors)} colours)"
            )
        _check_rgb(self.background_color, "ShapesConfig.background_color")
        clashing = [c for c in self.colors if COLORS[c] == tuple(self.background_color)]
        if clashing:
            raise ValueError(
                f"ShapesConfig.background_color {self.background_color!r} equals the colour of {clashing}; "
                "objects would be invisible"
            )


def _position_bounds(size: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed centre ``(x, y)`` keeping a shape of ``size`` inside the frame."""
    half = size / 2.0
    low = np.array([half - 0.5, half - 0.5])
    high = np.array([width - 0.5 - half, height - 0.5 - half])
    return low, high


def _trajectory(obj: ShapeObject, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre positions ``float64 [F, 2]`` and moving labels ``bool [F]`` of one object (clamped)."""
    low, high = _position_bounds(obj.size, height, width)
    positions = np.empty((num_frames + 1, 2))  # one step past the clip, for the last label
    positions[0] = obj.position
    if obj.direction is None:
        positions[1:] = positions[0]
    else:
        start, stop = obj.motion_frames if obj.motion_frames is not None else (0, num_frames)
        velocity = np.array(DIRECTIONS[obj.direction], dtype=float) * obj.speed
        for t in range(num_frames):
            step = velocity if start <= t < stop else 0.0
            positions[t + 1] = np.clip(positions[t] + step, low, high)
    moving = np.any(positions[1:] != positions[:-1], axis=1)
    return positions[:num_frames], moving


def _silhouettes(shape: str, size: int, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Full (unoccluded) shape masks ``bool [F, H, W]`` for bounding-box centres ``[F, 2]``."""
    dx = np.arange(width, dtype=float)[None, None, :] - centres[:, 0, None, None]
    dy = np.arange(height, dtype=float)[None, :, None] - centres[:, 1, None, None]
    half = size / 2.0
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= half
    if shape == "triangle":  # apex up, base at the bottom of the bounding box
        return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2.0)
    if shape == "ring":
        inner = max(half - max(2.0, size / 4.0), 0.0)
        radius2 = dx * dx + dy * dy
        return (radius2 <= half * half) & (radius2 > inner * inner)
    if shape == "bar":
        return (np.abs(dx) <= half) & (np.abs(dy) <= size / 6.0)
    if shape == "column":
        return (np.abs(dx) <= size / 6.0) & (np.abs(dy) <= half)
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def _background_frames(
    background: tuple[int, int, int] | np.ndarray, num_frames: int, height: int, width: int
) -> np.ndarray:
    """Background as a fresh ``uint8 [F, H, W, 3]`` array."""
    if isinstance(background, np.ndarray):
        if background.dtype != np.uint8 or background.shape not in (
            (height, width, 3),
            (num_frames, height, width, 3),
        ):
            raise ValueError(
                f"background array must be uint8 of shape [H, W, 3] = {[height, width, 3]} or "
                f"[F, H, W, 3] = {[num_frames, height, width, 3]}, "
                f"got {background.dtype} {list(background.shape)}"
            )
        return np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    _check_rgb(background, "background colour")
    return np.broadcast_to(np.asarray(background, dtype=np.uint8), (num_frames, height, width, 3)).copy()


def render_clip(
    objects: Sequence[ShapeObject],
    num_frames: int,
    height: int,
    width: int,
    background: tuple[int, int, int] | np.ndarray = (0, 0, 0),
    seed: int | None = None,
) -> ShapesClip:
    """Render hand-specified objects into a clip with exact ground truth.

    Objects are drawn in list order (later ones on top). Paths that would leave the frame are
    clamped at the border (the object stops; ``moving`` turns ``False``).

    Args:
        objects: the objects; initial positions must keep each shape inside the frame.
        num_frames: F; height, width: frame size H, W in pixels.
        background: an RGB triple, or a ``uint8`` image ``[H, W, 3]`` / video ``[F, H, W, 3]``
            (e.g. a frame read from any video) to draw the shapes on.
        seed: stored on the clip (used by :func:`generate_clip`); ``None`` for hand-made clips.

    Raises:
        ValueError: on an empty object list, an initial position outside the frame, a
            ``motion_frames`` interval past the clip, or a mis-shaped background.
    """
    return _render(objects, num_frames, height, width, background, seed)[0]


def _render(
    objects: Sequence[ShapeObject],
    num_frames: int,
    height: int,
    width: int,
    background: tuple[int, int, int] | np.ndarray,
    seed: int | None,
) -> tuple[ShapesClip, np.ndarray]:
    """:func:`render_clip`, also returning the unoccluded silhouettes ``bool [objects, F, H, W]``."""
    if not objects:
        raise ValueError("render_clip needs at least one object")
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"num_frames, height and width must be >= 1, got {num_frames}, {height}, {width}")
    frames = _background_frames(background, num_frames, height, width)
    n = len(objects)
    silhouettes = np.empty((n, num_frames, height, width), dtype=bool)
    moving = np.empty((n, num_frames), dtype=bool)
    tracks = np.empty((n, num_frames, 2), dtype=np.float32)
    for k, obj in enumerate(objects):
        low, high = _position_bounds(obj.size, height, width)
        if np.any(np.asarray(obj.position) < low) or np.any(np.asarray(obj.position) > high):
            raise ValueError(
                f"object {k} ({obj.phrase}, size {obj.size}) starts at {obj.position}, outside the "
                f"allowed centre range x in [{low[0]}, {high[0]}], y in [{low[1]}, {high[1]}] "
                f"of a {width}x{height} frame"
            )
        if obj.motion_frames is not None and obj.motion_frames[1] > num_frames:
            raise ValueError(
                f"object {k} motion_frames {obj.motion_frames} ends past the clip's {num_frames} frames"
            )
        positions, moving[k] = _trajectory(obj, num_frames, height, width)
        tracks[k] = positions
        silhouettes[k] = _silhouettes(obj.shape, obj.size, positions, height, width)
        frames[silhouettes[k]] = obj.rgb
    masks = silhouettes.copy()
    covered = np.zeros((num_frames, height, width), dtype=bool)
    for k in range(n - 1, -1, -1):  # front to back
        masks[k] &= ~covered
        covered |= silhouettes[k]
    clip = ShapesClip(
        objects=tuple(objects), masks=masks, moving=moving, tracks=tracks, frames=frames, seed=seed
    )
    return clip, silhouettes


def _as_xy(values: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` as plain Python floats."""
    return float(values[0]), float(values[1])


def _central(low: np.ndarray, high: np.ndarray, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """The central ``spread`` share of the interval ``[low, high]`` (per axis); exactly
    ``(low, high)`` for a spread of 1, so clips drawn with the default are unchanged."""
    if spread == 1.0:
        return low, high
    middle, half = (np.asarray(low) + high) / 2, spread * (np.asarray(high) - low) / 2
    return middle - half, middle + half


def _sample_object(config: ShapesConfig, rng: np.random.Generator, shape: str, color: str) -> ShapeObject:
    """Random size, start, motion of one object; a moving object's whole path fits in the frame."""
    size = int(rng.integers(config.size_range[0], config.size_range[1] + 1))
    low, high = _position_bounds(size, config.height, config.width)
    if rng.random() >= config.motion_probability:
        return ShapeObject(shape, color, size, _as_xy(rng.uniform(*_central(low, high, config.position_spread))))
    direction = str(rng.choice(list(DIRECTIONS)))
    f = config.num_frames
    if rng.random() < config.partial_motion_probability:
        length = int(rng.integers(2, f))  # 2 .. F - 1 frames
        start = int(rng.integers(0, f - length + 1))
        motion_frames: tuple[int, int] | None = (start, start + length)
    else:
        length, motion_frames = f, None
    step = np.array(DIRECTIONS[direction], dtype=float)
    axis = 0 if step[0] != 0 else 1
    room = high[axis] - low[axis]
    speed = min(float(rng.uniform(*config.speed_range)), float(room) / length)
    travel = step * speed * length
    # start anywhere such that start + travel also lies within [low, high]
    start_low = np.maximum(low, low - travel)
    start_high = np.minimum(high, high - travel)
    position = _as_xy(rng.uniform(*_central(start_low, start_high, config.position_spread)))
    return ShapeObject(shape, color, size, position, direction, speed, motion_frames)


def generate_clip(
    config: ShapesConfig | None = None,
    seed: int | None = None,
    background: np.ndarray | None = None,
) -> ShapesClip:
    """Generate one random clip; the same ``(config, seed)`` always gives the same clip.

    Args:
        config: generator settings (defaults to ``ShapesConfig()``).
        seed: non-negative integer; defaults to ``config.seed``.
        background: optional ``uint8`` image ``[H, W, 3]`` or video ``[F, H, W, 3]`` matching
            the config's size to draw on instead of ``config.background_color``.

    Returns:
        A :class:`ShapesClip` whose objects stay fully inside the frame, move in a constant
        direction and keep at least ``config.min_visible_fraction`` of their pixels visible.

    Raises:
        RuntimeError: if no layout satisfying ``min_visible_fraction`` is found (too many or
            too large objects for the frame).
    """
    config = config if config is not None else ShapesConfig()
    seed = config.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    backdrop = background if background is not None else config.background_color
    pairs = [(s, c) for s in config.shapes for c in config.colors]
    for _ in range(_MAX_SAMPLING_ATTEMPTS):
        n = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
        chosen = rng.choice(len(pairs), size=n, replace=False)
        objects = [_sample_object(config, rng, *pairs[i]) for i in chosen]
        clip, silhouettes = _render(
            objects, config.num_frames, config.height, config.width, backdrop, int(seed)
        )
        visible = clip.masks.sum(axis=(2, 3))
        if np.all(visible >= config.min_visible_fraction * silhouettes.sum(axis=(2, 3))):
            return clip
    raise RuntimeError(
        f"no layout of {config.num_objects} objects of size {config.size_range} in a {config.width}x"
        f"{config.height} frame kept min_visible_fraction={config.min_visible_fraction} after "
        f"{_MAX_SAMPLING_ATTEMPTS} attempts (seed {seed}); use fewer/smaller objects or a lower fraction"
    )


def clip_seed(root: int, *indices: int) -> int:
    """Independent clip seed in ``[0, 2**63)`` for a root seed and a path of indices.

    :func:`generate_dataset` gives clip ``i`` of a dataset with seed ``s`` the seed
    ``clip_seed(s, i)``; training and benchmark scripts use longer paths (e.g. ``(root, step, i)``).
    ``numpy.random.SeedSequence`` ignores trailing zero words, so ``clip_seed(s, i)`` equals
    ``clip_seed(s, i, 0)``: keep the paths of one purpose the same length.
    """
    return int(np.random.SeedSequence([root, *indices]).generate_state(1, dtype=np.uint64)[0]) >> 1


def generate_dataset(
    config: ShapesConfig | None = None,
    n: int = 1,
    seed: int | None = None,
    background: np.ndarray | None = None,
) -> Iterator[ShapesClip]:
    """Lazily generate ``n`` random clips.

    Clip ``i`` depends only on ``(config, seed, i)``: it equals
    ``generate_clip(config, clip.seed)``, so any clip can be regenerated from its ``seed``.

    Args:
        config: generator settings (defaults to ``ShapesConfig()``).
        n: number of clips (>= 0).
        seed: dataset seed (non-negative integer); defaults to ``config.seed``.
        background: optional background image / video shared by all clips (see :func:`generate_clip`).
    """
    config = config if config is not None else ShapesConfig()
    seed = config.seed if seed is None else seed
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for index in range(n):
        yield generate_clip(config, clip_seed(int(seed), index), background)


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode ``uint8 [F, H, W, 3]`` frames as H.264 (yuv444p, crf 0: near lossless) mp4."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "medium"}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a video file to ``uint8 [F, H, W, 3]`` RGB frames."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no video frames decoded from {path}")
    return np.stack(frames)


@dataclass(frozen=True)
class ManifestEntry:
    """One clip of a manifest written by :func:`write_dataset`.

    Attributes:
        id: clip identifier, e.g. ``"clip_00000"``.
        video: absolute path of the mp4.
        masks: absolute path of the ``.npz`` with ``masks``, ``moving`` and ``tracks``.
        caption, nouns, colors, motion_words, concepts: as on :class:`ShapesGroundTruth`.
        objects: the clip's objects in draw order.
        num_frames, height, width: clip size F, H, W.
        fps: frame rate of the mp4.
        seed: generator seed of the clip, or ``None``.
    """

    id: str
    video: Path
    masks: Path
    caption: str
    nouns: tuple[str, ...]
    colors: tuple[str, ...]
    motion_words: tuple[str, ...]
    concepts: tuple[str, ...]
    objects: tuple[ShapeObject, ...]
    num_frames: int
    height: int
    width: int
    fps: int
    seed: int | None


def write_dataset(
    directory: str | os.PathLike[str], clips: Iterable[ShapesClip], fps: int = 8
) -> Path:
    """Save clips as mp4 videos, ``.npz`` ground truth and a ``manifest.json``.

    Layout: ``videos/clip_XXXXX.mp4`` (H.264, yuv444p, crf 0: colours within ~1 level),
    ``masks/clip_XXXXX.npz`` (compressed; ``masks`` bool ``[objects, F, H, W]``, ``moving`` bool
    ``[objects, F]``, ``tracks`` float32 ``[objects, F, 2]``) and ``manifest.json``::

        {"format": "vidinterp.shapes", "version": 1, "vocabulary": [...],
         "entries": [{"id", "video", "masks", "caption", "nouns", "colors", "motion_words",
                      "concepts", "objects": [{"id", "shape", "color", "rgb", "size", "position",
                      "direction", "speed", "motion_frames", "motion_word"}, ...],
                      "num_frames", "height", "width", "fps", "seed"}, ...]}

    Paths in the manifest are relative to its folder. Existing files of the same names are
    overwritten.

    Returns:
        Path of the written ``manifest.json``.
    """
    if fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    root = Path(directory)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    entries = []
    for index, clip in enumerate(clips):
        clip_id = f"clip_{index:05d}"
        video_rel = f"videos/{clip_id}.mp4"
        masks_rel = f"masks/{clip_id}.npz"
        _write_video(root / video_rel, clip.frames, fps)
        np.savez_compressed(root / masks_rel, masks=clip.masks, moving=clip.moving, tracks=clip.tracks)
        entries.append(
            {
                "id": clip_id,
                "video": video_rel,
                "masks": masks_rel,
                "caption": clip.caption,
                "nouns": clip.nouns,
                "colors": clip.colors,
                "motion_words": clip.motion_words,
                "concepts": clip.concepts,
                "objects": [{"id": k, **obj.to_dict()} for k, obj in enumerate(clip.objects)],
                "num_frames": clip.num_frames,
                "height": clip.height,
                "width": clip.width,
                "fps": fps,
                "seed": clip.seed,
            }
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "vocabulary": list(VOCABULARY),
        "entries": entries,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read a manifest written by :func:`write_dataset` (a ``manifest.json`` or its folder).

    Relative paths are resolved against the manifest's folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    data = json.loads(path.read_text())
    found = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
    if found != (MANIFEST_FORMAT, MANIFEST_VERSION):
        raise ValueError(
            f"{path} is not a shapes manifest: expected (format, version) "
            f"{(MANIFEST_FORMAT, MANIFEST_VERSION)!r}, got {found!r}"
        )
    root = path.parent
    return [
        ManifestEntry(
            id=e["id"],
            video=(root / e["video"]).resolve(),
            masks=(root / e["masks"]).resolve(),
            caption=e["caption"],
            nouns=tuple(e["nouns"]),
            colors=tuple(e["colors"]),
            motion_words=tuple(e["motion_words"]),
            concepts=tuple(e["concepts"]),
            objects=tuple(ShapeObject.from_dict(o) for o in e["objects"]),
            num_frames=int(e["num_frames"]),
            height=int(e["height"]),
            width=int(e["width"]),
            fps=int(e["fps"]),
            seed=e["seed"],
        )
        for e in data["entries"]
    ]


def load_clip_ground_truth(entry: ManifestEntry) -> ShapesGroundTruth:
    """Load a manifest entry's exact masks, moving labels and tracks (no video decoding)."""
    with np.load(entry.masks) as data:
        truth = ShapesGroundTruth(
            objects=entry.objects, masks=data["masks"], moving=data["moving"], tracks=data["tracks"]
        )
    expected = (len(entry.objects), entry.num_frames, entry.height, entry.width)
    if truth.masks.shape != expected:
        raise ValueError(f"{entry.masks}: masks have shape {truth.masks.shape}, manifest says {expected}")
    return truth


def load_clip(entry: ManifestEntry) -> ShapesClip:
    """Load a manifest entry as a :class:`ShapesClip` (frames decoded from the mp4)."""
    truth = load_clip_ground_truth(entry)
    frames = read_video(entry.video)
    expected = (entry.num_frames, entry.height, entry.width, 3)
    if frames.shape != expected:
        raise ValueError(f"{entry.video}: decoded frames have shape {frames.shape}, manifest says {expected}")
    return ShapesClip(
        objects=truth.objects,
        masks=truth.masks,
        moving=truth.moving,
        tracks=truth.tracks,
        frames=frames,
        seed=entry.seed,
    )
