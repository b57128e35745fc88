"""Plotly view of point tracks over their video: markers and trails, a slider over pixel frames."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["plot_tracks"]

_PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3")


def plot_tracks(tracks: xr.Dataset, video: np.ndarray | None = None, *, trail: int = 6, marker_size: int = 9,
                size: int = 480):
    """The video with each point's position (a marker) and its last ``trail`` positions (a line)
    at every pixel frame; a slider and play button step through the frames. Points predicted
    occluded (``tracks["occluded"]``) are drawn as hollow markers; hovering shows the point, its
    position and confidence.

    Args:
        tracks: a :func:`vidinterp.track` Dataset (``tracks`` ``(point, frame, xy)``).
        video: ``uint8 [frames, H, W, 3]``; default the Dataset's ``video``, else no image.
        trail: pixel frames of trail behind each marker (0: none).
        size: figure width in pixels.

    Positions are the Dataset's continuous pixel coordinates (``[0, W] x [0, H]``); the image's
    pixel ``c`` is drawn over ``[c, c + 1)``, so markers sit where the tracks say.
    """
    import plotly.graph_objects as go

    if "tracks" not in tracks or tuple(tracks["tracks"].dims) != ("point", "frame", "xy"):
        raise ValueError("plot_tracks needs a vidinterp.track Dataset with tracks (point, frame, xy)")
    if video is None and "video" in tracks:
        video = np.asarray(tracks["video"].values)
    positions = np.asarray(tracks["tracks"].transpose("point", "frame", "xy").values, dtype=np.float64)
    points, frames = positions.shape[:2]
    occluded = (np.asarray(tracks["occluded"].values, dtype=bool) if "occluded" in tracks
                else np.zeros((points, frames), dtype=bool))
    confidence = (np.asarray(tracks["confidence"].values, dtype=np.float64) if "confidence" in tracks
                  else np.ones((points, frames)))
    colours = [_PALETTE[p % len(_PALETTE)] for p in range(points)]
    if video is not None:
        height, width = video.shape[1:3]
    else:
        height = int(np.ceil(max(positions[..., 1].max(), 1)))
        width = int(np.ceil(max(positions[..., 0].max(), 1)))

    def data(t: int) -> list:
        shown = []
        if video is not None:
            shown.append(go.Image(z=video[min(t, len(video) - 1)], x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip"))
        start = max(0, t - trail)
        for p in range(points):
            shown.append(go.Scatter(x=positions[p, start:t + 1, 0], y=positions[p, start:t + 1, 1], mode="lines",
                                    line={"color": colours[p], "width": 2}, hoverinfo="skip", showlegend=False))
        shown.append(go.Scatter(
            x=positions[:, t, 0], y=positions[:, t, 1], mode="markers", showlegend=False,
            marker={"color": colours, "size": marker_size, "line": {"color": "white", "width": 1},
                    "symbol": ["circle-open" if occluded[p, t] else "circle" for p in range(points)]},
            customdata=np.stack([np.arange(points), confidence[:, t]], axis=-1),
            hovertemplate="point %{customdata[0]}<br>x %{x:.1f}, y %{y:.1f}<br>confidence %{customdata[1]:.3f}"
                          "<extra></extra>"))
        return shown

    figure = go.Figure(data=data(0), frames=[go.Frame(data=data(t), name=str(t)) for t in range(frames)])
    token = tracks["token_frame"].values if "token_frame" in tracks.coords else np.arange(frames)
    steps = [{"args": [[str(t)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}],
              "label": f"{t} (latent {int(token[t])})", "method": "animate"} for t in range(frames)]
    title = ", ".join(f"{key} {tracks.attrs[key]}" for key in ("model", "layer", "step") if key in tracks.attrs)
    figure.update_layout(
        title=title or None,
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "frame: "}}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0.0, "y": -0.08, "buttons": [
            {"label": "play", "method": "animate",
             "args": [None, {"frame": {"duration": 120, "redraw": True}, "fromcurrent": True}]}]}],
        width=size, height=int(size * height / max(width, 1)) + 160, margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    figure.update_xaxes(range=[0, width], showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(range=[height, 0], showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")
    return figure
