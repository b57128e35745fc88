"""QK-matching peaks over the video (IMAP paper, Fig. 4): where each concept's surrogate token
lands, per (layer, head), drawn at the centre of its token cell on every pixel frame."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from vidinterp.pixels import pixels_per_token
from vidinterp.plotting.animation import (
    VideoFigure,
    checked_video,
    frame_image,
    pixel_frame_labels,
    player_layout,
    video_axes,
)
from vidinterp.plotting.style import PALETTE

__all__ = ["plot_qk_peaks", "peak_positions"]

_DIMS = ("concept", "frame", "layer", "head", "step")


def _subset(values: np.ndarray, wanted: Iterable[int] | None, what: str) -> list[int]:
    if wanted is None:
        return values.tolist()
    wanted = [int(item) for item in wanted]
    unknown = [item for item in wanted if item not in values]
    if unknown or not wanted:
        raise ValueError(f"unknown {what} {unknown or '(none given)'}; the diagnostics have {values.tolist()}")
    return wanted


def peak_positions(diagnostics: xr.Dataset, cell: tuple[int, int], *, step: int | None = None,
                   layers: Iterable[int] | None = None, heads: Iterable[int] | None = None) -> xr.Dataset:
    """Surrogate token positions in pixels: ``x``, ``y`` ``(concept, frame, layer, head)``, the
    centre ``((x + 0.5) c_x, (y + 0.5) c_y)`` of the token cell, NaN where the analysis recorded
    none (``-1``).

    Args:
        diagnostics: ``Trace.diagnostics`` with ``surrogate_y``/``surrogate_x`` ``(concept, frame,
            layer, head, step)`` (:class:`~vidinterp.analyses.qk_matching.QKMatching`).
        cell: ``(c_y, c_x)`` pixels per token (:func:`vidinterp.pixels.pixels_per_token`).
        step: schedule index (default: the last analysed step).
        layers, heads: subsets (default: all).

    Raises:
        ValueError: no surrogate positions, or an unknown step, layer or head.
    """
    missing = [name for name in ("surrogate_y", "surrogate_x") if name not in diagnostics.data_vars]
    if missing:
        raise ValueError(f"no {missing} in the diagnostics (variables: {list(diagnostics.data_vars)}); run "
                         f"vidinterp.analyses.qk_matching.QKMatching() in the trace")
    steps = diagnostics.step.values.tolist()
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"step {step!r} was not analysed; the steps are {steps}")
    layers = _subset(diagnostics.layer.values, layers, "layers")
    heads = _subset(diagnostics["head"].values, heads, "heads")
    picked = diagnostics[["surrogate_y", "surrogate_x"]].sel(step=step, layer=layers, head=heads)
    positions = {}
    for axis, size in zip(("y", "x"), cell):
        index = picked[f"surrogate_{axis}"].transpose(*(d for d in _DIMS if d != "step"))
        positions[axis] = ((index + 0.5) * size).where(index >= 0)
    return xr.Dataset(positions, attrs={"step": step})


def _grid_geometry(diagnostics: xr.Dataset, grid: xr.Dataset | xr.DataArray | None) -> tuple[tuple[int, int], int, int]:
    """``((pixels per token y, x), height, width)``: from ``grid``'s ``y_pixel``/``x_pixel``
    coordinates when given, else from those of ``diagnostics``, else from the grid attrs
    ``QKMatching`` records on ``surrogate_y``."""
    source = grid if grid is not None else diagnostics
    if "y_pixel" in source.coords and "x_pixel" in source.coords:
        cell = pixels_per_token(source)
        return cell, source.sizes["y"] * cell[0], source.sizes["x"] * cell[1]
    attrs = diagnostics["surrogate_y"].attrs if "surrogate_y" in diagnostics else {}
    if grid is None and {"grid_height", "grid_width", "pixels_per_token_y", "pixels_per_token_x"} <= set(attrs):
        cell = (int(attrs["pixels_per_token_y"]), int(attrs["pixels_per_token_x"]))
        return cell, int(attrs["grid_height"]) * cell[0], int(attrs["grid_width"]) * cell[1]
    raise ValueError("no token-grid geometry: the diagnostics have no y_pixel/x_pixel coordinates or grid attrs "
                     "(a trace file from before they were recorded): pass grid=trace.maps (any traced map with the "
                     "same token grid)")


def plot_qk_peaks(diagnostics: xr.Dataset, video: np.ndarray | None = None, *,
                  grid: xr.Dataset | xr.DataArray | None = None, concepts: Iterable[str] | None = None,
                  layers: Iterable[int] | None = None, heads: Iterable[int] | None = None,
                  step: int | None = None, marker_size: int = 9, cell_size: int = 260) -> VideoFigure:
    """One panel per concept: on every pixel frame, the video and a marker for every (layer,
    head) at the pixel centre of the token where that concept's QK peak (its surrogate token)
    lands in the frame's latent frame. Markers are coloured by layer; hover names layer, head and
    token. Slider ``"px 5 · latent 2"`` and play button, no auto-play.

    Args:
        diagnostics: ``Trace.diagnostics`` with ``surrogate_y``/``surrogate_x``.
        video: ``uint8 [pixel_frames, height, width, 3]``; without it, markers on an empty frame.
        grid: where the token grid's pixel geometry is read (``y_pixel``/``x_pixel``
            coordinates, e.g. ``Trace.maps``); default: the grid attrs ``QKMatching`` records
            on ``surrogate_y`` (needed only for trace files written before them).
        concepts, layers, heads: subsets (default: all); step: schedule index (default: last).
        marker_size: marker diameter in screen pixels; cell_size: panel height in screen pixels.

    Returns:
        A :class:`~vidinterp.plotting.animation.VideoFigure`; per panel, the video frame (with a
        video) then one ``go.Scatter`` of markers, whose ``customdata`` rows are ``(layer, head,
        token y, token x)``.

    Raises:
        ValueError: no surrogate positions, no pixel geometry, unknown subsets, or a video
            whose size is not the token grid's.
    """
    cell, height, width = _grid_geometry(diagnostics, grid)
    positions = peak_positions(diagnostics, cell, step=step, layers=layers, heads=heads)
    names = list(diagnostics.concept.values)
    concepts = names if concepts is None else list(concepts)
    unknown = [concept for concept in concepts if concept not in names]
    if unknown or not concepts:
        raise ValueError(f"unknown concepts {unknown or '(none given)'}; the diagnostics have {names}")
    video = checked_video(video, height, width)
    latent, labels = pixel_frame_labels(diagnostics, None if video is None else len(video))
    layer_ids, head_ids = positions.layer.values, positions["head"].values
    layer_of, head_of = np.meshgrid(layer_ids, head_ids, indexing="ij")  # [L, H]
    colour_of = {layer: PALETTE[i % len(PALETTE)] for i, layer in enumerate(layer_ids)}

    def panel_data(pixel: int) -> list:
        shown = []
        for concept in concepts:
            x = positions["x"].sel(concept=concept).isel(frame=latent[pixel]).values  # [L, H]
            y = positions["y"].sel(concept=concept).isel(frame=latent[pixel]).values
            keep = np.isfinite(x) & np.isfinite(y)
            if video is not None:
                shown.append(frame_image(video[pixel]))
            shown.append(go.Scatter(
                x=x[keep], y=y[keep], mode="markers", showlegend=False,
                marker={"size": marker_size, "color": [colour_of[layer] for layer in layer_of[keep]], "opacity": 0.8,
                        "line": {"color": "white", "width": 1}},
                customdata=np.stack([layer_of[keep], head_of[keep], y[keep] // cell[0], x[keep] // cell[1]], axis=-1),
                hovertemplate=f"{concept}<br>layer %{{customdata[0]}} head %{{customdata[1]}}<br>"
                              "token (y %{customdata[2]}, x %{customdata[3]})<extra></extra>"))
        return shown

    figure = make_subplots(rows=1, cols=len(concepts), subplot_titles=concepts, figure=VideoFigure(),
                           horizontal_spacing=0.02)
    per_panel = 2 if video is not None else 1
    for index, trace in enumerate(panel_data(0)):
        figure.add_trace(trace, row=1, col=index // per_panel + 1)
    frame_names = [str(pixel) for pixel in range(len(latent))]
    figure.frames = [go.Frame(data=panel_data(pixel), name=name) for pixel, name in enumerate(frame_names)]
    for layer, colour in colour_of.items():  # legend: one entry per layer colour
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"layer {layer}",
                                    marker={"color": colour, "size": marker_size}), row=1, col=1)
    figure.update_layout(
        **player_layout(frame_names, labels, prefix="pixel frame: "),
        title=f"QK-matching peaks (step {positions.attrs['step']})",
        height=cell_size + 200, width=max(int(cell_size * width / max(height, 1)) * len(concepts) + 160, 420),
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
    )
    video_axes(figure, height, width)
    return figure
