"""Export one method's map of one concept as a video file: every pixel frame of the video with the
map of the latent frame it belongs to alpha-blended over it, as MP4 (H.264) or GIF.

Conventions are those of the interactive view (:func:`vidinterp.plotting.plot_maps`) and of
:mod:`vidinterp.pixels`: pixel frame ``p`` shows the map of the latent (token) frame whose span
``pixel_frame_first .. pixel_frame_last`` holds it; ``scale`` picks the min-max group
(``"frame"``, ``"concept"``, ``"global"``, :func:`vidinterp.plotting.scale_maps`);
``interpolation="nearest"`` paints each token cell over its pixel block, ``"bilinear"``
interpolates; the colour of scaled value ``v`` is the plotly colour scale at ``v`` (256 levels)
and each output pixel is ``(1 - opacity) * video + opacity * colour``, rounded to ``uint8``.
Without a video the colours are drawn alone (opacity 1).

MP4 is H.264 (libx264, ``yuv420p``, constant quality ``crf=12``) through PyAV; odd frame sizes
are padded by repeating the last row/column (H.264 needs even sizes), so the first
``height x width`` pixels are the frame. GIF is written by Pillow with one adaptive 256-colour
palette per frame; GIF delays are whole hundredths of a second (8 fps: 120 ms a frame), and
Pillow stores a run of identical consecutive frames once with the run's total delay, so a GIF
may hold fewer frames than the video while still showing every pixel frame for its time. A
pixel of an MP4 is within about 10 (of 255) of the blended value away from colour edges (H.264
halves the colour resolution: 2x2 blocks share one chroma sample), a GIF's within about 8 (the
palette). Both files are written atomically (a temporary file renamed into place).

Sizes: the default trace (``vidinterp run``: 6 frames of 32x32) exports one method and concept to
a 3.2 kB MP4 or a 4.7 kB GIF.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from vidinterp.plotting.overlays import Interpolation, Scale, check_overlay_options, scale_maps, upsample_map
from vidinterp.plotting.style import DEFAULT_COLORSCALE, DEFAULT_OPACITY
from vidinterp.pixels import pixel_frame_index, pixels_per_token
from vidinterp.trace_file import atomic_output

if TYPE_CHECKING:
    from vidinterp.results import Trace

__all__ = ["export_overlay", "overlay_frames", "colour_table", "EXPORT_SUFFIXES"]

#: File name endings :func:`export_overlay` writes, and their formats.
EXPORT_SUFFIXES = {".mp4": "mp4", ".gif": "gif"}
_MP4_QUALITY = "12"  # libx264 constant rate factor: 0 lossless .. 51 worst; 12 is visually lossless


def colour_table(colorscale: str | list = DEFAULT_COLORSCALE) -> np.ndarray:
    """``uint8 [256, 3]``: the plotly colour scale (name or ``[[position, colour], ...]``)
    sampled at ``i / 255`` for ``i = 0 .. 255``.

    Raises:
        ValueError: an unknown colour scale name (the message lists plotly's names).
    """
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

    try:
        scale = get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
        colours = sample_colorscale(scale, list(np.linspace(0.0, 1.0, 256)), colortype="rgb")
    except Exception as error:  # plotly raises PlotlyError (no ValueError subclass) for unknown names
        raise ValueError(f"unknown colorscale {colorscale!r}: expected a plotly colour scale name such as "
                         f"{DEFAULT_COLORSCALE!r} or a list of [position, colour] ({error})") from error
    return np.rint(np.array([unlabel_rgb(colour) for colour in colours], dtype=np.float64)).astype(np.uint8)


def overlay_frames(
    trace_or_maps: "Trace | xr.Dataset",
    *,
    method: str,
    concept: str,
    video: np.ndarray | None = None,
    colorscale: str | list = DEFAULT_COLORSCALE,
    opacity: float = DEFAULT_OPACITY,
    scale: Scale = "frame",
    interpolation: Interpolation = "nearest",
) -> np.ndarray:
    """The frames :func:`export_overlay` writes: ``uint8 [pixel_frames, height, width, 3]``
    (module docstring for the conventions). Arguments as for :func:`export_overlay`."""
    maps, video = _maps_and_video(trace_or_maps, video)
    if method not in maps.data_vars:
        raise ValueError(f"unknown method {method!r}; the maps are {list(maps.data_vars)}")
    if tuple(maps[method].dims) != ("concept", "frame", "y", "x"):
        raise ValueError(f"{method!r} has dims {tuple(maps[method].dims)}, expected a map (concept, frame, y, x)")
    concepts = [str(name) for name in maps.concept.values]
    if concept not in concepts:
        raise ValueError(f"unknown concept {concept!r}; the maps have {concepts}")
    check_overlay_options(scale, interpolation, opacity)
    cell_y, cell_x = pixels_per_token(maps)
    height, width = maps.sizes["y"] * cell_y, maps.sizes["x"] * cell_x
    if video is not None:
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video must be uint8 [frames, height, width, 3], got {video.dtype} {list(video.shape)}")
        if tuple(video.shape[1:3]) != (height, width):
            raise ValueError(f"video frames are {video.shape[1]}x{video.shape[2]} pixels; the maps cover "
                             f"{height}x{width}: pass the video the trace ran on")
    latent = pixel_frame_index(maps, None if video is None else len(video))
    scaled = scale_maps(maps[method].values, scale)[concepts.index(concept)]  # [frame, y, x] in [0, 1]
    pixels = upsample_map(scaled, height, width, interpolation)  # [frame, height, width]
    levels = np.rint(np.nan_to_num(pixels, nan=0.0) * 255).astype(np.intp)
    colours = colour_table(colorscale)[levels].astype(np.float32)[latent]  # [pixel_frame, height, width, 3]
    if video is None:
        return colours.astype(np.uint8)
    blended = (1.0 - float(opacity)) * video.astype(np.float32) + float(opacity) * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def export_overlay(
    trace_or_maps: "Trace | xr.Dataset",
    path: str | PathLike,
    *,
    method: str,
    concept: str,
    video: np.ndarray | None = None,
    fps: float = 8,
    colorscale: str | list = DEFAULT_COLORSCALE,
    opacity: float = DEFAULT_OPACITY,
    scale: Scale = "frame",
    interpolation: Interpolation = "nearest",
) -> Path:
    """Write the overlay video of ``method``'s map of ``concept`` to ``path`` (``.mp4`` or ``.gif``).

    Args:
        trace_or_maps: a :class:`~vidinterp.Trace` (its maps and video) or a maps Dataset.
        path: the file to write; its ending picks the format (:data:`EXPORT_SUFFIXES`).
        method: the map variable (e.g. ``"imap"``); concept: one of the maps' concepts.
        video: ``uint8 [pixel_frames, height, width, 3]`` (default: the trace's video; none:
            the map's colours alone).
        fps: frames per second of the file.
        colorscale, opacity, scale, interpolation: as in :func:`vidinterp.plotting.plot_maps`
            (defaults :data:`~vidinterp.plotting.style.DEFAULT_COLORSCALE`, ``0.5``, ``"frame"``,
            ``"nearest"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`; it holds one frame per pixel frame.

    Raises:
        ValueError: an unknown file ending, method, concept, scale, interpolation or colour
            scale, ``fps <= 0``, opacity outside ``[0, 1]``, or a video of the wrong size. Nothing
            is written then, and an earlier file at ``path`` is unchanged.
    """
    path = Path(path)
    kind = EXPORT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"cannot export to {str(path)!r}: the file must end in one of {sorted(EXPORT_SUFFIXES)}")
    if not float(fps) > 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    frames = overlay_frames(trace_or_maps, method=method, concept=concept, video=video, colorscale=colorscale,
                            opacity=opacity, scale=scale, interpolation=interpolation)
    with atomic_output(path, what=f"exporting the {method} overlay of {concept!r}") as temporary:
        (_write_mp4 if kind == "mp4" else _write_gif)(temporary, frames, float(fps))
    return path


def _maps_and_video(trace_or_maps: "Trace | xr.Dataset", video: np.ndarray | None) -> tuple[xr.Dataset, np.ndarray | None]:
    from vidinterp.results import Trace

    if isinstance(trace_or_maps, Trace):
        return trace_or_maps.maps, trace_or_maps.video if video is None else video
    if isinstance(trace_or_maps, xr.Dataset):
        return trace_or_maps, video
    raise TypeError(f"export_overlay takes a vidinterp.Trace or its maps (an xarray.Dataset), got "
                    f"{type(trace_or_maps).__name__}")


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 MP4 of ``uint8 [frames, height, width, 3]``, padded to even sizes by edge repetition."""
    from fractions import Fraction

    import av

    pad_y, pad_x = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_y or pad_x:
        frames = np.pad(frames, ((0, 0), (0, pad_y), (0, pad_x), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": _MP4_QUALITY}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Looping GIF of ``uint8 [frames, height, width, 3]`` (Pillow, adaptive palette per frame)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0, optimize=False, disposal=1)
