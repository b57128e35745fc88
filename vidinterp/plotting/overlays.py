"""The video with map overlays: methods side by side, one row per concept, a slider over pixel frames.

Conventions (docs/figures.md, "Map overlays"):

* **scaling** (``scale``): every map is min-max scaled to ``[0, 1]`` before it is drawn, over
  one of three groups of its token values: ``"frame"`` (each concept's map of each latent frame
  on its own: where in the frame), ``"concept"`` (each concept over all its frames: also when),
  ``"global"`` (all concepts and frames of the method together: also which concept). Methods
  are always scaled separately (their raw units differ). A constant group scales to 0.
* **upsampling** (``interpolation``): ``"nearest"`` (default) gives every pixel the value of
  the token cell that holds it, the convention of :mod:`vidinterp.pixels`; ``"bilinear"``
  interpolates between cell centres (half-pixel centres, edges clamped: ``torch``'s
  ``interpolate(mode="bilinear", align_corners=False)``). Nearest overlays are drawn as one brick
  per token cell (exactly the upsampled map, at token size); bilinear ones at pixel resolution.
* **time**: one animation frame per pixel frame, showing that frame of the video under the map
  of the latent frame whose span holds it (``"px 5 · latent 2"``).
"""

from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
import xarray as xr
from plotly.subplots import make_subplots

from vidinterp.metrics import upsample_nearest
from vidinterp.pixels import pixels_per_token
from vidinterp.plotting.animation import (
    VideoFigure,
    checked_video,
    frame_image,
    pixel_frame_labels,
    player_layout,
    video_axes,
)
from vidinterp.plotting.style import DEFAULT_COLORSCALE, DEFAULT_OPACITY

__all__ = ["plot_maps", "scale_maps", "upsample_map", "map_variables", "check_overlay_options", "MAP_DIMS", "SCALES", "INTERPOLATIONS", "Scale", "Interpolation"]

MAP_DIMS = ("concept", "frame", "y", "x")
SCALES = ("frame", "concept", "global")
INTERPOLATIONS = ("nearest", "bilinear")
Scale = Literal["frame", "concept", "global"]
Interpolation = Literal["nearest", "bilinear"]

#: axes of a ``[concept, frame, y, x]`` array that one min-max group spans, per scaling mode
_SCALE_AXES = {"frame": (2, 3), "concept": (1, 2, 3), "global": (0, 1, 2, 3)}


def scale_maps(values: np.ndarray, scale: Scale = "frame") -> np.ndarray:
    """Min-max scale one method's maps ``[concept, frame, y, x]`` to ``[0, 1]`` (float64) per
    group of ``scale`` (``"frame"``, ``"concept"`` or ``"global"``, see the module docstring).
    NaN values are ignored for the minimum and maximum and stay NaN; a constant group becomes 0.

    Raises:
        ValueError: an unknown ``scale`` or an array that is not 4-d.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 4:
        raise ValueError(f"scale_maps needs [concept, frame, y, x] values, got shape {list(values.shape)}")
    axes = _SCALE_AXES[scale]
    low = np.nanmin(values, axis=axes, keepdims=True)
    span = np.nanmax(values, axis=axes, keepdims=True) - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0 * values)


def upsample_map(values: np.ndarray, height: int, width: int, interpolation: Interpolation = "nearest") -> np.ndarray:
    """Resize token maps ``[..., h, w]`` to ``[..., height, width]`` pixels (float32):
    ``"nearest"`` repeats each token cell over its pixel block (``height``/``width`` must be
    whole multiples of ``h``/``w``); ``"bilinear"`` interpolates with half-pixel centres.

    Raises:
        ValueError: an unknown ``interpolation``, or (nearest) a size that is no whole multiple.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    values = np.asarray(values, dtype=np.float32)
    if interpolation == "nearest":
        return upsample_nearest(values, height, width)
    grid = torch.as_tensor(values).reshape(-1, 1, *values.shape[-2:])
    resized = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
    return resized.reshape(*values.shape[:-2], height, width).numpy()


def check_overlay_options(scale: str, interpolation: str, opacity: float) -> None:
    """Raise a ``ValueError`` naming the allowed values for a bad ``scale`` (:data:`SCALES`),
    ``interpolation`` (:data:`INTERPOLATIONS`) or ``opacity`` (``[0, 1]``) of an overlay."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")


def map_variables(maps: xr.Dataset, methods: Iterable[str] | None) -> list[str]:
    """The ``(concept, frame, y, x)`` map variables of ``maps`` to show: ``methods`` checked, or
    every such variable.

    Raises:
        ValueError: no such variable, an unknown name, a variable of other dims, or no methods.
    """
    if methods is None:
        chosen = [name for name in maps.data_vars if tuple(maps[name].dims) == MAP_DIMS]
        if not chosen:
            raise ValueError(f"no {MAP_DIMS} maps to plot; the variables are {list(maps.data_vars)}")
        return chosen
    chosen = list(methods)
    for name in chosen:
        if name not in maps.data_vars:
            raise ValueError(f"no map {name!r}; the maps are {list(maps.data_vars)}")
        if tuple(maps[name].dims) != MAP_DIMS:
            raise ValueError(f"{name!r} has dims {tuple(maps[name].dims)}, expected a map with dims {MAP_DIMS}")
    if not chosen:
        raise ValueError("methods is empty; name at least one map variable")
    return chosen


def plot_maps(
    maps: xr.Dataset | xr.DataArray,
    video: np.ndarray | None = None,
    *,
    methods: Iterable[str] | None = None,
    concepts: Iterable[str] | None = None,
    scale: Scale = "frame",
    interpolation: Interpolation = "nearest",
    colorscale: str = DEFAULT_COLORSCALE,
    opacity: float = DEFAULT_OPACITY,
    cell_size: int = 220,
) -> VideoFigure:
    """Map overlays on the video, methods side by side: one row per concept, one column per
    method, one animation frame per pixel frame (slider ``"px 5 · latent 2"``, play button, no
    auto-play), one colour bar for the scaled value.

    Args:
        maps: ``Trace.maps``, or any Dataset / one DataArray of ``(concept, frame, y, x)`` maps
            with a trace's coordinates (``pixel_frame_first``/``_last``, ``y_pixel``/``x_pixel``);
            a user analysis' map variable is plotted like the built-in ones.
        video: ``uint8 [pixel_frames, height, width, 3]``, the video the maps belong to; without
            it the maps are drawn alone (opaque) over the pixel frames their spans cover.
        methods: map variables to show side by side (default: every ``(concept, frame, y, x)``
            variable); concepts: concepts to show (default: all).
        scale: ``"frame"``, ``"concept"`` or ``"global"`` min-max scaling (module docstring).
        interpolation: ``"nearest"`` (default, :mod:`vidinterp.pixels`' convention) or
            ``"bilinear"`` upsampling to pixels.
        colorscale: plotly colour scale of the overlay (default
            :data:`~vidinterp.plotting.style.DEFAULT_COLORSCALE`).
        opacity: overlay opacity in ``[0, 1]`` over the video.
        cell_size: height of one subplot in screen pixels.

    Returns:
        A :class:`~vidinterp.plotting.animation.VideoFigure`. Per subplot, traces are the video
        frame (``go.Image``, with a video) then the overlay (``go.Heatmap``, ``zmin=0, zmax=1``).

    Raises:
        ValueError: bad ``scale``, ``interpolation``, ``opacity``, method or concept names, or a
            video that does not match the maps' pixel size.
    """
    if isinstance(maps, xr.DataArray):
        maps = maps.to_dataset(name=maps.name or "map")
    check_overlay_options(scale, interpolation, opacity)
    methods = map_variables(maps, methods)
    concepts = list(maps.concept.values) if concepts is None else list(concepts)
    unknown = [concept for concept in concepts if concept not in maps.concept.values]
    if unknown or not concepts:
        raise ValueError(f"unknown concepts {unknown or '(none given)'}; the maps have {list(maps.concept.values)}")
    cell_y, cell_x = pixels_per_token(maps)
    height, width = maps.sizes["y"] * cell_y, maps.sizes["x"] * cell_x
    video = checked_video(video, height, width)
    latent, labels = pixel_frame_labels(maps, None if video is None else len(video))

    scaled = {method: scale_maps(maps[method].sel(concept=concepts).values, scale) for method in methods}
    if interpolation == "bilinear":
        scaled = {method: upsample_map(values, height, width, "bilinear") for method, values in scaled.items()}
        brick = {"x0": 0.5, "dx": 1, "y0": 0.5, "dy": 1}
    else:
        brick = {"x0": cell_x / 2, "dx": cell_x, "y0": cell_y / 2, "dy": cell_y}
    colorbar = {"title": {"text": f"map, min-max<br>per {scale}"}, "thickness": 12}

    def panel_data(pixel: int) -> list:
        shown = []
        for row, concept in enumerate(concepts):
            for method in methods:
                if video is not None:
                    shown.append(frame_image(video[pixel]))
                shown.append(go.Heatmap(
                    z=scaled[method][row, latent[pixel]], **brick, zmin=0, zmax=1, colorscale=colorscale,
                    opacity=opacity if video is not None else 1.0, showscale=row == 0 and method == methods[0],
                    colorbar=colorbar,
                    hovertemplate=f"{method} · {concept}<br>x %{{x}}, y %{{y}}<br>scaled %{{z:.3f}}<extra></extra>"))
        return shown

    figure = make_subplots(
        rows=len(concepts), cols=len(methods), figure=VideoFigure(),
        subplot_titles=[f"{method} · {concept}" for concept in concepts for method in methods],
        horizontal_spacing=0.02, vertical_spacing=0.08 / max(len(concepts), 1),
    )
    per_panel = 2 if video is not None else 1
    for index, trace in enumerate(panel_data(0)):
        panel = index // per_panel
        figure.add_trace(trace, row=panel // len(methods) + 1, col=panel % len(methods) + 1)
    names = [str(pixel) for pixel in range(len(latent))]
    figure.frames = [go.Frame(data=panel_data(pixel), name=name) for pixel, name in enumerate(names)]
    panel_width = cell_size * width / max(height, 1)
    figure.update_layout(
        **player_layout(names, labels, prefix="pixel frame: "),
        height=cell_size * len(concepts) + 160, width=max(int(panel_width * len(methods)) + 140, 420),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    video_axes(figure, height, width)
    return figure
