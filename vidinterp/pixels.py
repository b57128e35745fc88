"""From token maps to pixel maps: the one latent-to-pixel convention of vidinterp.

A map variable has dims ``(concept, frame, y, x)``: ``frame`` counts token frames and ``y``/``x``
token rows and columns. Its coordinates say where they sit in the video (set by
:func:`vidinterp.analysis.map_coords` from the adapter's layout):

* **time**: token frame ``f`` covers pixel frames ``pixel_frame_first[f] .. pixel_frame_last[f]``
  (inclusive). For the causal video VAEs (CogVideoX, HunyuanVideo, Wan) with temporal
  compression ``k`` that is ``0 .. 0`` for ``f = 0`` and ``k*f - k + 1 .. k*f`` for ``f >= 1``;
  with a temporal patch ``p_t`` a token frame covers the spans of its ``p_t`` latent frames.
* **space**: token ``(y, x)`` covers the pixel block of rows ``y*c_y .. (y+1)*c_y - 1`` and
  columns ``x*c_x .. (x+1)*c_x - 1``, ``c`` the pixels per token (VAE compression times patch
  size); its centre, ``y_pixel``/``x_pixel``, is at ``(y + 0.5) * c_y``.

:func:`pixel_maps` applies exactly that: every pixel frame takes the map of the token frame
whose span holds it, every pixel the value of the token cell that holds it (nearest-cell
upsampling, no interpolation), so a binarised pixel map is exactly the upsampled token mask.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["pixel_maps", "pixel_frame_index", "pixels_per_token"]


def pixels_per_token(maps: xr.Dataset | xr.DataArray) -> tuple[int, int]:
    """``(rows, columns)`` of pixels per token cell, from the ``y_pixel``/``x_pixel`` centres."""
    cells = []
    for axis in ("y", "x"):
        name = f"{axis}_pixel"
        if name not in maps.coords:
            raise ValueError(f"maps have no {name!r} coordinate; expected maps made by a vidinterp trace")
        cells.append(int(round(2 * float(maps.coords[name].values[0]))))
    return cells[0], cells[1]


def pixel_frame_index(maps: xr.Dataset | xr.DataArray, num_frames: int | None = None) -> np.ndarray:
    """``int [pixel_frames]``: the token frame of every pixel frame (``pixel_frame_first`` ..
    ``pixel_frame_last`` spans). ``num_frames`` defaults to the last span's end + 1.

    Raises:
        ValueError: when a pixel frame lies in no span or in two.
    """
    first = np.asarray(maps.coords["pixel_frame_first"].values, dtype=int)
    last = np.asarray(maps.coords["pixel_frame_last"].values, dtype=int)
    total = int(last.max()) + 1 if num_frames is None else int(num_frames)
    index = np.full(total, -1)
    for frame, (start, stop) in enumerate(zip(first, last)):
        covered = np.arange(start, min(stop, total - 1) + 1)
        if (index[covered] >= 0).any():
            raise ValueError(f"token frame {frame} covers pixel frames {start}..{stop}, which an earlier span covers")
        index[covered] = frame
    missing = np.flatnonzero(index < 0)
    if missing.size:
        raise ValueError(f"pixel frames {missing.tolist()} lie in no token frame's span "
                         f"({list(zip(first.tolist(), last.tolist()))})")
    return index


def pixel_maps(maps: xr.DataArray, num_frames: int | None = None) -> xr.DataArray:
    """A ``(concept, frame, y, x)`` token map at pixel resolution: ``(concept, pixel_frame,
    pixel_y, pixel_x)`` by the convention of this module (nearest cell, span of each token
    frame). ``num_frames`` defaults to the pixel frames the spans cover.

    >>> pixels = pixel_maps(trace.maps["imap"])       # (concept, pixel_frame, pixel_y, pixel_x)
    """
    if not isinstance(maps, xr.DataArray):
        raise TypeError(f"pixel_maps takes one map variable (an xarray.DataArray), got {type(maps).__name__}")
    expected = ("concept", "frame", "y", "x")
    if tuple(maps.dims) != expected:
        raise ValueError(f"pixel_maps needs dims {expected}, got {tuple(maps.dims)}")
    cell_y, cell_x = pixels_per_token(maps)
    frames = pixel_frame_index(maps, num_frames)
    values = np.asarray(maps.values)[:, frames]
    values = values.repeat(cell_y, axis=2).repeat(cell_x, axis=3)
    return xr.DataArray(
        values,
        dims=("concept", "pixel_frame", "pixel_y", "pixel_x"),
        coords={"concept": maps.concept.values, "pixel_frame": np.arange(len(frames)), "frame": ("pixel_frame", frames)},
        name=maps.name,
        attrs=dict(maps.attrs),
    )
