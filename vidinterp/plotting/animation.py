"""Video figures: a plotly Figure that never auto-plays, and its frame slider and play button.

Every figure that steps through a video (:func:`~vidinterp.plotting.plot_maps`,
:func:`~vidinterp.plotting.plot_qk_peaks`, :func:`~vidinterp.plotting.plot_tracks`) is a
:class:`VideoFigure` with one animation frame per **pixel frame** of the video, named
``str(pixel_frame)``, a slider labelled ``"px 5 · latent 2"`` (the pixel frame and the latent
(token) frame whose span holds it, :func:`vidinterp.pixels.pixel_frame_index`) and play/pause
buttons. Nothing moves until the user presses play.

Coordinates: the x axis runs over ``[0, width]`` and the y axis over ``[height, 0]`` pixels,
continuous (pixel column ``c`` is drawn over ``[c, c + 1)``); a token cell ``(y, x)`` of
``c_y x c_x`` pixels covers ``[x c_x, (x + 1) c_x) x [y c_y, (y + 1) c_y)`` and its centre is the
map's ``x_pixel``/``y_pixel`` coordinate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from vidinterp.pixels import pixel_frame_index
from vidinterp.plotting.style import FRAME_DURATION_MS, MAX_VIDEO_SIDE

__all__ = ["VideoFigure", "player_layout", "pixel_frame_labels", "frame_image", "video_axes", "checked_video"]


class VideoFigure(go.Figure):
    """A ``plotly.graph_objects.Figure`` whose HTML does not start its animation on page load.

    plotly's :meth:`~plotly.graph_objects.Figure.to_html` and ``write_html`` default to
    ``auto_play=True``, which plays every frame of a figure once as soon as the page opens;
    here both default to ``auto_play=False`` (pass ``auto_play=True`` to get plotly's
    behaviour). ``fig.show()`` in a notebook never auto-plays. ``plotly.io.write_html(fig,
    ...)`` called directly still needs ``auto_play=False``.
    """

    def to_html(self, *args, auto_play: bool = False, **kwargs) -> str:
        return super().to_html(*args, auto_play=auto_play, **kwargs)

    def write_html(self, *args, auto_play: bool = False, **kwargs):
        return super().write_html(*args, auto_play=auto_play, **kwargs)


def player_layout(names: Sequence[str], labels: Sequence[str], prefix: str = "frame: ") -> dict:
    """Layout entries (``sliders``, ``updatemenus``) of a slider over the animation frames
    ``names`` (one step each, labelled ``labels``) and a play and a pause button. Playing shows
    a frame every :data:`~vidinterp.plotting.style.FRAME_DURATION_MS` ms from the current one."""
    if len(names) != len(labels):
        raise ValueError(f"player_layout needs one label per frame, got {len(names)} frames and {len(labels)} labels")
    still = {"duration": 0, "redraw": True}
    steps = [{"args": [[name], {"frame": still, "mode": "immediate", "transition": {"duration": 0}}],
              "label": label, "method": "animate"} for name, label in zip(names, labels)]
    play = {"label": "play", "method": "animate",
            "args": [None, {"frame": {"duration": FRAME_DURATION_MS, "redraw": True}, "fromcurrent": True,
                            "transition": {"duration": 0}}]}
    pause = {"label": "pause", "method": "animate",
             "args": [[None], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate",
                               "transition": {"duration": 0}}]}
    return {
        "sliders": [{"active": 0, "steps": steps, "currentvalue": {"prefix": prefix}, "x": 0.16, "len": 0.84,
                     "y": 0, "yanchor": "top", "pad": {"t": 10}}],
        "updatemenus": [{"type": "buttons", "showactive": False, "direction": "left", "x": 0, "xanchor": "left",
                         "y": 0, "yanchor": "top", "pad": {"t": 20}, "buttons": [play, pause]}],
    }


def pixel_frame_labels(source: xr.Dataset | xr.DataArray,
                       num_frames: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``(latent, labels)``: ``int [pixel_frames]``, the latent (token) frame of every pixel
    frame, and the slider labels ``"px {p} · latent {f}"``. ``source`` carries the
    ``pixel_frame_first``/``pixel_frame_last`` coordinates of a traced map; ``num_frames``
    defaults to the pixel frames their spans cover.

    Raises:
        ValueError: ``source`` has no frame spans, or a pixel frame lies in no span.
    """
    missing = [name for name in ("pixel_frame_first", "pixel_frame_last") if name not in source.coords]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} coordinate on 'frame': expected the result of a vidinterp "
                         f"trace (its coordinates say which pixel frames each latent frame covers)")
    latent = pixel_frame_index(source, num_frames)
    return latent, [f"px {p} · latent {f}" for p, f in enumerate(latent)]


def checked_video(video: np.ndarray | None, height: int | None = None, width: int | None = None) -> np.ndarray | None:
    """``video`` as a ``uint8 [frames, height, width, 3]`` array (``None`` stays ``None``).

    Raises:
        ValueError: another shape, or a frame size other than ``height x width`` pixels.
    """
    if video is None:
        return None
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [frames, height, width, 3], got {video.dtype} {list(video.shape)}")
    if height is not None and tuple(video.shape[1:3]) != (height, width):
        raise ValueError(f"video frames are {video.shape[1]}x{video.shape[2]} pixels; the maps cover "
                         f"{height}x{width} (token grid times pixels per token): pass the video the trace ran on")
    return video


def frame_image(frame: np.ndarray, max_side: int = MAX_VIDEO_SIDE) -> go.Image:
    """One ``[height, width, 3]`` video frame drawn with pixel ``(r, c)`` over ``[c, c + 1) x [r, r + 1)``.

    A frame longer than ``max_side`` pixels is drawn from ``s x s`` block means, ``s =
    ceil(max(height, width) / max_side)`` (the last blocks repeat edge pixels), each block over
    the ``s x s`` pixels it stands for: coordinates stay those of the full frame, so maps and
    markers sit where they would, while a figure holding one image per panel and pixel frame
    stays ``s**2`` times smaller (a 480 x 720 CogVideoX frame: ``s = 3``).
    """
    stride = max(1, -(-max(frame.shape[:2]) // max_side))
    if stride > 1:
        height, width = frame.shape[:2]
        padded = np.pad(frame, ((0, -height % stride), (0, -width % stride), (0, 0)), mode="edge")
        blocks = padded.reshape(padded.shape[0] // stride, stride, padded.shape[1] // stride, stride, 3)
        frame = blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    return go.Image(z=frame, x0=stride / 2, y0=stride / 2, dx=stride, dy=stride, hoverinfo="skip")


def video_axes(figure: go.Figure, height: int, width: int) -> None:
    """Every subplot of ``figure``: x over ``[0, width]``, y over ``[height, 0]`` (image
    orientation), equal pixel aspect, no ticks or grid."""
    figure.update_xaxes(range=[0, width], showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    figure.update_yaxes(range=[height, 0], showticklabels=False, showgrid=False, zeroline=False)
    for name in figure.layout:
        if name.startswith("yaxis"):
            figure.layout[name].scaleanchor = "x" + name[len("yaxis"):]
