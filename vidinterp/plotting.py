"""Plotly figures of traced maps: the video with overlays, methods side by side, a frame slider."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

__all__ = ["plot_maps", "upsample_map", "MAP_DIMS"]

MAP_DIMS = ("concept", "frame", "y", "x")


def upsample_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a ``[y, x]`` token map to ``[height, width]`` pixels."""
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def _normalised(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to ``[0, 1]`` (a constant map becomes zeros)."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def plot_maps(
    maps: xr.Dataset,
    video: np.ndarray | None = None,
    *,
    methods: Iterable[str] | None = None,
    concepts: Iterable[str] | None = None,
    opacity: float = 0.55,
    colorscale: str = "Jet",
    cell_size: int = 220,
):
    """Grid of map overlays: one row per concept, one column per method, a slider over latent
    frames. Each map is min-max normalised per frame and shown over the last pixel frame the
    latent frame covers (or alone without ``video``).

    Args:
        maps: Dataset of ``(concept, frame, y, x)`` variables (``Trace.maps``).
        video: ``uint8`` ``[frames, height, width, 3]`` the maps belong to.
        methods, concepts: subsets to show (default: all).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    methods = [name for name in (methods or maps.data_vars) if maps[name].dims == MAP_DIMS]
    if not methods:
        raise ValueError(f"no (concept, frame, y, x) maps to plot; variables are {list(maps.data_vars)}")
    concepts = list(concepts or maps.concept.values)
    frames = list(maps.frame.values)
    last_pixel = maps["pixel_frame_last"].values if "pixel_frame_last" in maps.coords else frames
    if video is not None:
        height, width = video.shape[1:3]
    else:
        height, width = maps.sizes["y"], maps.sizes["x"]

    figure = make_subplots(
        rows=len(concepts), cols=len(methods),
        subplot_titles=[f"{method} · {concept}" for concept in concepts for method in methods],
        horizontal_spacing=0.02, vertical_spacing=0.06,
    )

    def traces_for(frame_index: int) -> list:
        traces = []
        for concept in concepts:
            for method in methods:
                values = maps[method].sel(concept=concept).isel(frame=frame_index).values
                overlay = _normalised(upsample_map(values, height, width))
                if video is not None:
                    pixel = min(int(last_pixel[frame_index]), len(video) - 1)
                    traces.append(go.Image(z=video[pixel]))
                traces.append(go.Heatmap(z=overlay, colorscale=colorscale, opacity=opacity if video is not None else 1.0,
                                         zmin=0, zmax=1, showscale=False))
        return traces

    per_cell = 2 if video is not None else 1
    for index, trace in enumerate(traces_for(0)):
        cell = index // per_cell
        figure.add_trace(trace, row=cell // len(methods) + 1, col=cell % len(methods) + 1)
    figure.frames = [go.Frame(data=traces_for(i), name=str(frame)) for i, frame in enumerate(frames)]
    steps = [
        {"args": [[str(frame)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}],
         "label": f"{frame} (px {int(last_pixel[i])})", "method": "animate"}
        for i, frame in enumerate(frames)
    ]
    figure.update_layout(
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "latent frame: "}}],
        height=cell_size * len(concepts) + 120, width=max(cell_size * len(methods) * width // max(height, 1), 400),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False, autorange="reversed")
    return figure
