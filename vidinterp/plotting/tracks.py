"""Point tracks over their video: markers and trails, a slider over pixel frames, no auto-play.

Same conventions as the map overlays (:mod:`vidinterp.plotting.animation`): continuous pixel
coordinates (pixel column ``c`` drawn over ``[c, c + 1)``), one animation frame per pixel frame
labelled ``"px 5 · latent 2"``, play and pause buttons.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from vidinterp.plotting.animation import VideoFigure, checked_video, frame_image, player_layout, video_axes
from vidinterp.plotting.style import PALETTE

__all__ = ["plot_tracks"]


def plot_tracks(tracks: xr.Dataset, video: np.ndarray | None = None, *, trail: int = 6, marker_size: int = 9,
                size: int = 480) -> VideoFigure:
    """The video with each point's position (a marker) and its last ``trail`` positions (a line)
    at every pixel frame. Points predicted occluded (``tracks["occluded"]``) are drawn as
    hollow markers; hovering shows the point, its position and confidence.

    Args:
        tracks: a :func:`vidinterp.track` Dataset (``tracks`` ``(point, frame, xy)`` in pixels,
            ``token_frame`` coordinate on ``frame``).
        video: ``uint8 [frames, H, W, 3]``; default the Dataset's ``video``, else no image.
        trail: pixel frames of trail behind each marker (0: none).
        marker_size: marker diameter in screen pixels.
        size: figure width in screen pixels.

    Returns:
        A :class:`~vidinterp.plotting.animation.VideoFigure`; each frame's traces are the video
        frame (with a video), one trail line per point, then one scatter of all markers (last).

    Positions are the Dataset's continuous pixel coordinates (``[0, W] x [0, H]``); the image's
    pixel ``c`` is drawn over ``[c, c + 1)``, so markers sit where the tracks say.

    Raises:
        ValueError: no ``tracks (point, frame, xy)`` variable, or a negative ``trail``.
    """
    if "tracks" not in tracks or tuple(tracks["tracks"].dims) != ("point", "frame", "xy"):
        raise ValueError("plot_tracks needs a vidinterp.track Dataset with tracks (point, frame, xy)")
    if int(trail) < 0:
        raise ValueError(f"trail must be >= 0 pixel frames, got {trail!r}")
    if video is None and "video" in tracks:
        video = np.asarray(tracks["video"].values)
    video = checked_video(video)
    positions = np.asarray(tracks["tracks"].transpose("point", "frame", "xy").values, dtype=np.float64)
    points, frames = positions.shape[:2]
    occluded = (np.asarray(tracks["occluded"].values, dtype=bool) if "occluded" in tracks
                else np.zeros((points, frames), dtype=bool))
    confidence = (np.asarray(tracks["confidence"].values, dtype=np.float64) if "confidence" in tracks
                  else np.ones((points, frames)))
    colours = [PALETTE[p % len(PALETTE)] for p in range(points)]
    if video is not None:
        height, width = video.shape[1:3]
    else:
        height = int(np.ceil(max(positions[..., 1].max(), 1)))
        width = int(np.ceil(max(positions[..., 0].max(), 1)))

    def data(t: int) -> list:
        shown = [] if video is None else [frame_image(video[min(t, len(video) - 1)])]
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

    names = [str(t) for t in range(frames)]
    figure = VideoFigure(data=data(0), frames=[go.Frame(data=data(t), name=names[t]) for t in range(frames)])
    token = tracks["token_frame"].values if "token_frame" in tracks.coords else np.arange(frames)
    labels = [f"px {t} · latent {int(token[t])}" for t in range(frames)]
    title = ", ".join(f"{key} {tracks.attrs[key]}" for key in ("model", "layer", "step") if key in tracks.attrs)
    figure.update_layout(
        title=title or None, **player_layout(names, labels, prefix="pixel frame: "),
        width=size, height=int(size * height / max(width, 1)) + 160, margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    video_axes(figure, height, width)
    return figure
