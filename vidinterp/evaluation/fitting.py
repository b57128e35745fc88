"""Fitting a clip record to the geometry a model runs at: frames, masks, ignore and tracks alike.

**The rule** (one for every benchmark):

* **frames in time**: the model's native frame count ``F_m`` (an image, ``F = 1``, stays one
  frame when the model takes one frame). The frames are picked evenly over the clip by index,
  each the nearest frame (ties: the earlier), exactly as :mod:`vidinterp.video` fits a clip
  without timestamps (:func:`vidinterp.media.timing.target_times` and ``nearest_indices``): a
  longer clip is subsampled, a shorter one has frames repeated. The picked source indices are
  kept in ``attrs["frame_index"]`` (composed when a fitted record is fitted again), so
  per-frame labels outside the record (e.g. the shapes ``moving`` flags) follow.
* **space**: the model's native height and width, by :func:`vidinterp.media.fitting.plan_frame`
  (``fit="crop"``: centre crop to the target aspect, default; ``"pad"``: black bars). Frames are
  resized as :mod:`vidinterp.video` resizes them (bilinear, antialiased); masks and ``ignore``
  take the **nearest** source pixel of the same window (pixel centres mapped through the plan);
  padded bars are background in every mask and ``True`` in ``ignore`` (created when the record
  had none).
* **tracks** (continuous pixels, column ``c`` covers ``[c, c+1)``): mapped through the same
  window and scale; a point that a crop cuts off is marked not visible (``visible`` created when
  the record had none).

A record that already has the target geometry is returned unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vidinterp.datasets.records import ClipRecord
from vidinterp.media.fitting import FitMode, FramePlan, apply_plan, plan_frame
from vidinterp.media.timing import nearest_indices, target_times

__all__ = ["target_geometry", "fit_record", "frame_indices"]


def target_geometry(adapter, num_frames: int) -> tuple[int, int, int]:
    """``(frames, height, width)`` the fitting rule gives a clip of ``num_frames`` frames on
    ``adapter``'s model (module docstring): the native geometry, one frame for an image when the
    model takes one."""
    native_frames, height, width = adapter.default_geometry()
    if num_frames == 1:
        try:
            adapter.check_geometry(1, height, width)
        except ValueError:
            return native_frames, height, width
        return 1, height, width
    return native_frames, height, width


def frame_indices(num_frames: int, count: int) -> np.ndarray:
    """``int64 [count]``: the source frames picked evenly over ``num_frames`` frames."""
    times = np.arange(num_frames, dtype=np.float64)
    return nearest_indices(times, target_times(times, count))


def _nearest_rows(start: int, source_size: int, target_size: int) -> np.ndarray:
    """Source indices of ``target_size`` pixels resampled nearest from ``source_size`` pixels
    beginning at ``start`` (pixel centres mapped linearly)."""
    centres = (np.arange(target_size) + 0.5) * source_size / target_size
    return start + np.clip(np.floor(centres).astype(int), 0, source_size - 1)


def _fit_labels(plan: FramePlan, labels: np.ndarray, bars: bool) -> np.ndarray:
    """``bool [..., h, w]`` -> ``bool [..., H, W]``, nearest through ``plan``; bars are ``bars``."""
    top, left, height, width = plan.window
    placed_top, placed_left, placed_height, placed_width = plan.placed
    rows = _nearest_rows(top, height, placed_height)
    columns = _nearest_rows(left, width, placed_width)
    resized = labels[..., rows, :][..., :, columns]
    canvas = np.full((*labels.shape[:-2], *plan.target), bars, dtype=bool)
    canvas[..., placed_top:placed_top + placed_height, placed_left:placed_left + placed_width] = resized
    return canvas


def _fit_tracks(plan: FramePlan, tracks: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top, left, height, width = plan.window
    placed_top, placed_left, placed_height, placed_width = plan.placed
    scale = np.array([placed_width / width, placed_height / height])
    moved = (tracks - np.array([left, top])) * scale + np.array([placed_left, placed_top])
    inside = ((tracks[..., 0] >= left) & (tracks[..., 0] < left + width)
              & (tracks[..., 1] >= top) & (tracks[..., 1] < top + height))
    return moved.astype(np.float32), visible & inside


def fit_record(record: ClipRecord, geometry: tuple[int, int, int], fit: FitMode = "crop") -> ClipRecord:
    """``record`` fitted to ``geometry`` ``(frames, height, width)`` by the module's rule.

    Returns:
        A new :class:`ClipRecord` (frames ``uint8 [frames, height, width, 3]``, masks ``bool
        [N, frames, height, width]``, ...), or ``record`` itself when it has that geometry.

    Raises:
        ValueError: a size of ``geometry`` is not positive.
    """
    frames, height, width = (int(size) for size in geometry)
    if min(frames, height, width) < 1:
        raise ValueError(f"{record.clip_id}: cannot fit a clip to {geometry} (frames, height, width): every size "
                         f"must be a positive integer")
    if record.frames.shape[:3] == (frames, height, width):
        return record
    picked = frame_indices(record.num_frames, frames)
    plan = plan_frame(record.frames.shape[1:3], (height, width), fit)
    fitted_frames = np.stack([apply_plan(plan, record.frames[index]) for index in picked])
    masks = _fit_labels(plan, record.masks[:, picked], False)
    padded = plan.placed[2:] != plan.target
    ignore = record.ignore
    if ignore is not None or padded:
        source = (np.zeros(record.frames.shape[:3], dtype=bool) if ignore is None else np.asarray(ignore, dtype=bool))
        ignore = _fit_labels(plan, source[picked], True)
    tracks, visible = record.tracks, record.visible
    if tracks is not None:
        seen = np.ones(tracks.shape[:2], dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
        tracks, visible = _fit_tracks(plan, np.asarray(tracks, dtype=np.float64)[:, picked], seen[:, picked])
    previous = record.attrs.get("frame_index")
    index = picked if previous is None else np.asarray(previous, dtype=int)[picked]
    attrs = {**record.attrs, "frame_index": [int(i) for i in index],
             "fit": f"{record.num_frames} frames at {record.frames.shape[1]}x{record.frames.shape[2]} -> "
                    f"{frames} at {height}x{width} ({plan.describe()})"}
    return dataclasses.replace(record, frames=fitted_frames, masks=masks, ignore=ignore, tracks=tracks,
                               visible=visible, attrs=attrs)
