"""The Motion Localisation Score (MLS) of the IMAP paper: a vision-language judge rates a map.

Rendering follows the public IMAP evaluation script (``eval_compressed.py``): 12 uniformly
sampled frames; per frame the map is min-max normalised, resized to the frame (bilinear) and
thresholded at its mean; three 4x3 grids are drawn: the raw frames, an overlay that keeps the
frame where the map exceeds its mean and halves it (darkens) elsewhere, and the continuous map
as an inferno heatmap. The judge scores five criteria from 1 to 5 (:data:`CRITERIA`), mapped to
``0..1`` by ``(s - 1) / 4``. The paper's per-criterion scores go below 0.2 (ViCLIP's TL 0.17),
so its mapping is not ``s / 5``; ``(s - 1) / 4`` is the linear map of 1..5 onto 0..1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from vidinterp.evaluation.judge import Judge, ask_scores

__all__ = ["Criterion", "CRITERIA", "MLSGrids", "MLSResult", "sample_frames", "render_mls_grids", "judge_prompt",
           "motion_localisation_score"]


@dataclass(frozen=True)
class Criterion:
    """One MLS criterion: ``key`` (the paper's column and the judge's JSON key), its ``name``,
    and the ``question`` the judge answers."""

    key: str
    name: str
    question: str


CRITERIA: tuple[Criterion, ...] = (
    Criterion("SL", "spatial localisation",
              "In each frame, does the highlighted region cover where the concept happens (the object that "
              "moves, or the part of it that performs the motion) and not other places?"),
    Criterion("TL", "temporal localisation",
              "Is the map strong in the frames where the concept happens and weak or absent in the frames "
              "where it does not?"),
    Criterion("PR", "prompt relevance",
              "Does the highlighted region match the concept as the caption uses it (the right object or "
              "action among those in the video)?"),
    Criterion("SS", "specificity / sparsity",
              "Is the map focused and compact on the relevant region, rather than diffuse or spread over the "
              "background?"),
    Criterion("OBJ", "objectness",
              "Does the highlighted region follow the shape and boundaries of one coherent object or region, "
              "rather than scattered blobs?"),
)

_INFERNO = np.round(matplotlib.colormaps["inferno"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def sample_frames(num_frames: int, count: int = 12) -> np.ndarray:
    """``int64 [count]`` frame indices spread uniformly over ``0 .. num_frames - 1``.

    ``floor(linspace(0, num_frames - 1, count))``, as the IMAP script's
    ``np.linspace(..., dtype=int)`` (which truncates, not rounds): 49 frames give
    ``0, 4, 8, 13, 17, 21, 26, 30, 34, 39, 43, 48``. With fewer than ``count`` frames indices
    repeat, so the grid keeps its layout (5 frames: ``0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4``).
    """
    if num_frames < 1 or count < 1:
        raise ValueError(f"need num_frames >= 1 and count >= 1; got num_frames={num_frames}, count={count}")
    return np.floor(np.linspace(0, num_frames - 1, count)).astype(np.int64)


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float ``[h, w, ...]`` -> float ``[height, width, ...]``, bilinear with half-pixel centres and
    clamped edges (OpenCV's ``INTER_LINEAR``, also when shrinking)."""

    def taps(size_out: int, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(position).astype(np.int64)
        return low, np.minimum(low + 1, size_in - 1), position - low

    trailing = (1,) * (image.ndim - 2)
    y0, y1, fy = taps(height, image.shape[0])
    x0, x1, fx = taps(width, image.shape[1])
    fy, fx = fy.reshape(-1, 1, *trailing), fx.reshape(1, -1, *trailing)
    rows_low, rows_high = image[y0], image[y1]
    top = rows_low[:, x0] * (1 - fx) + rows_low[:, x1] * fx
    bottom = rows_high[:, x0] * (1 - fx) + rows_high[:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _tile(images: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """``rows * cols`` equal ``[H, W, 3]`` images -> one ``[rows * H, cols * W, 3]`` grid, row-major."""
    return np.concatenate([np.concatenate(images[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class MLSGrids:
    """The three grids shown to the judge.

    Attributes:
        raw: ``uint8 [rows * H, cols * W, 3]`` sampled frames, row-major in time order.
        overlay: the same frames, kept where the map exceeds its mean and halved elsewhere.
        heatmap: the continuous normalised map in the inferno colormap.
        frame_indices: ``int64 [rows * cols]`` the sampled frame of each tile.
    """

    raw: np.ndarray
    overlay: np.ndarray
    heatmap: np.ndarray
    frame_indices: np.ndarray

    def pngs(self) -> tuple[bytes, bytes, bytes]:
        """PNG bytes of ``raw``, ``overlay`` and ``heatmap``, the order the judge receives them."""
        return _png(self.raw), _png(self.overlay), _png(self.heatmap)


def render_mls_grids(frames: np.ndarray, saliency: np.ndarray, *, count: int = 12, rows: int = 4, cols: int = 3,
                     tile_height: int | None = None) -> MLSGrids:
    """Render the MLS grids of one map of one video.

    Per sampled frame (:func:`sample_frames`): the map is min-max normalised (a constant map
    becomes 0), resized bilinearly to the tile, and thresholded at the resized map's mean
    (``> mean``); the overlay keeps the frame above the threshold and shows ``frame // 2`` below
    it; the heatmap colours ``floor(255 * map)`` with matplotlib's inferno.

    Args:
        frames: ``uint8 [F, H, W, 3]`` RGB video.
        saliency: float ``[F, h, w]``, one map per pixel frame (the caller maps latent frames to
            pixel frames, e.g. with ``vidinterp.pixels.pixel_maps``); any grid size.
        count: frames sampled; must equal ``rows * cols``.
        rows, cols: the grid layout (the paper's 4 rows x 3 columns).
        tile_height: resize every frame to this height (width in proportion, rounded half up;
            bilinear) to keep the grids small; ``None`` keeps the frame size.
    """
    frames, saliency = np.asarray(frames), np.asarray(saliency, dtype=np.float64)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3]; got {frames.dtype} {frames.shape}")
    if saliency.ndim != 3 or saliency.shape[0] != frames.shape[0]:
        raise ValueError(f"saliency must be [F, h, w] with F = {frames.shape[0]} (one map per frame); "
                         f"got {saliency.shape}")
    if not np.isfinite(saliency).all():
        raise ValueError("saliency must be finite; it holds NaN or infinity")
    if count != rows * cols:
        raise ValueError(f"count must equal rows * cols = {rows * cols}; got count={count}")
    height, width = frames.shape[1:3]
    if tile_height is not None:
        if tile_height < 1:
            raise ValueError(f"tile_height must be >= 1 or None; got {tile_height}")
        height, width = tile_height, max(1, int(width * tile_height / frames.shape[1] + 0.5))
    indices = sample_frames(frames.shape[0], count)
    raw, overlay, heatmap = [], [], []
    for index in indices:
        frame = frames[index]
        if frame.shape[:2] != (height, width):
            frame = np.clip(np.round(_resize_bilinear(frame.astype(np.float64), height, width)), 0, 255).astype(np.uint8)
        low, high = saliency[index].min(), saliency[index].max()
        normalised = (saliency[index] - low) / (high - low) if high > low else np.zeros_like(saliency[index])
        continuous = _resize_bilinear(normalised, height, width)
        above = continuous > continuous.mean()
        raw.append(frame)
        overlay.append(np.where(above[..., None], frame, frame // 2))
        heatmap.append(_INFERNO[np.clip(continuous * 255, 0, 255).astype(np.uint8)])
    return MLSGrids(_tile(raw, rows, cols), _tile(overlay, rows, cols), _tile(heatmap, rows, cols), indices)


def judge_prompt(caption: str, concept: str, *, count: int = 12, rows: int = 4, cols: int = 3) -> str:
    """The text sent to the judge with the three grids: the task, the caption and concept, how
    to read the grids, the five criteria, and the reply format (a JSON object of integers 1-5)."""
    criteria = "\n".join(f"- {c.key} ({c.name}): {c.question}" for c in CRITERIA)
    template = ", ".join(f'"{c.key}": n' for c in CRITERIA)
    return (
        f'You are judging a saliency map that should localise the concept "{concept}" in a video with the '
        f'caption "{caption}".\n'
        f"You get three images. Each is a grid of {count} frames sampled uniformly from the video, {rows} rows "
        f"by {cols} columns, in time order from left to right, then top to bottom:\n"
        "Image 1: the original frames.\n"
        "Image 2: the frames kept where the map is above its mean and darkened elsewhere.\n"
        "Image 3: the map alone as a heatmap (dark purple = low, bright yellow = high).\n"
        "Rate the map on each criterion with an integer from 1 (very poor) to 5 (excellent):\n"
        f"{criteria}\n"
        f"Reply with only a JSON object with exactly these keys, each n an integer from 1 to 5: {{{template}}}"
    )


@dataclass(frozen=True)
class MLSResult:
    """The judge's verdict on one map.

    Attributes:
        scores: criterion key -> ``(s - 1) / 4`` in ``[0, 1]``.
        average: the mean of ``scores`` over the five criteria (the paper's "Avg").
        raw_scores: criterion key -> the judge's integer 1..5.
        replies: every raw reply of the judge, the parsed one last.
        frame_indices: the sampled frames, in grid order.
        caption, concept: what was judged.
    """

    scores: dict[str, float]
    average: float
    raw_scores: dict[str, int]
    replies: list[str]
    frame_indices: list[int]
    caption: str
    concept: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {"scores": dict(self.scores), "average": self.average, "raw_scores": dict(self.raw_scores),
                "replies": list(self.replies), "frame_indices": list(self.frame_indices),
                "caption": self.caption, "concept": self.concept}


def motion_localisation_score(frames: np.ndarray, saliency: np.ndarray, *, caption: str, concept: str,
                              judge: Judge, count: int = 12, rows: int = 4, cols: int = 3,
                              tile_height: int | None = None, attempts: int = 3) -> MLSResult:
    """Render the grids (:func:`render_mls_grids`), ask ``judge`` (:func:`judge_prompt`), and map
    its five 1-5 scores to ``0..1``.

    Args:
        frames: ``uint8 [F, H, W, 3]``; saliency: float ``[F, h, w]`` per pixel frame.
        caption: the video's caption; concept: the word the map traces.
        judge: any :class:`~vidinterp.evaluation.judge.Judge`.
        attempts: requests in all while the reply cannot be parsed (transport retries are the
            judge's own).

    Raises:
        vidinterp.evaluation.judge.JudgeReplyError: no parseable reply in ``attempts`` requests.
        vidinterp.evaluation.judge.JudgeError: the judge failed.
    """
    grids = render_mls_grids(frames, saliency, count=count, rows=rows, cols=cols, tile_height=tile_height)
    prompt = judge_prompt(caption, concept, count=count, rows=rows, cols=cols)
    raw_scores, replies = ask_scores(judge, prompt, grids.pngs(), [c.key for c in CRITERIA], attempts=attempts)
    scores = {key: (value - 1) / 4 for key, value in raw_scores.items()}
    return MLSResult(scores=scores, average=float(np.mean(list(scores.values()))), raw_scores=raw_scores,
                     replies=replies, frame_indices=grids.frame_indices.tolist(), caption=caption, concept=concept)
