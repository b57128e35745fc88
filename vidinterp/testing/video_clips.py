"""Small synthetic clips with a known answer, written in the formats :mod:`vidinterp.video`
reads, for testing decoding, time sampling and fitting.

:func:`square_frames` draws a bright square that moves a known number of pixels per frame on a
black background; :func:`square_centres` finds it again in decoded frames, so a test can tell
which source frame a decoder (or a time-sampling rule) returned. The writers put frames into an
mp4 with chosen timestamps (PyAV), an animated GIF or lossless animated WebP with chosen frame
durations (PIL), or a folder of numbered PNGs.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["square_frames", "square_centres", "write_mp4", "write_gif", "write_webp", "write_folder"]


def square_frames(count: int, height: int = 48, width: int = 64, size: int = 12, step: int = 4,
                  top: int | None = None, colour: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``uint8 [count, height, width, 3]``: black frames with a ``size``-pixel square whose left
    edge is at ``4 + step * i`` pixels in frame ``i`` (top edge ``top``, default centred)."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    top = (height - size) // 2 if top is None else top
    for index in range(count):
        left = 4 + step * index
        if left + size > width:
            raise ValueError(f"frame {index}: the square at x={left} leaves the {width}-pixel frame; use fewer "
                             f"frames, a smaller step or a wider frame")
        frames[index, top:top + size, left:left + size] = colour
    return frames


def square_centres(frames: np.ndarray, threshold: int = 128) -> np.ndarray:
    """``float64 [frames, 2]``: the ``(y, x)`` centre in pixels of the pixels brighter than
    ``threshold`` (mean over channels) in every frame of ``uint8 [F, H, W, 3]`` (NaN where none)."""
    centres = np.full((len(frames), 2), np.nan)
    for index, frame in enumerate(frames):
        ys, xs = np.nonzero(frame.astype(np.float32).mean(axis=-1) > threshold)
        if len(ys):
            centres[index] = ys.mean(), xs.mean()
    return centres


def write_mp4(path: str | os.PathLike, frames: np.ndarray, times: Sequence[float] | None = None, fps: float = 25.0,
              codec: str = "libx264", lossless: bool = True) -> Path:
    """Encode ``uint8 [F, H, W, 3]`` (even H and W) with PyAV, frame ``i`` shown at ``times[i]``
    seconds (millisecond timestamps; default ``i / fps``). ``lossless`` sets ``crf=0``."""
    import av

    path = Path(path)
    times = [index / fps for index in range(len(frames))] if times is None else list(times)
    if len(times) != len(frames):
        raise ValueError(f"times must give one time per frame: {len(times)} times for {len(frames)} frames")
    milliseconds = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = milliseconds
        stream.codec_context.time_base = milliseconds
        if lossless and codec == "libx264":
            stream.options = {"crf": "0"}
        for frame, time in zip(frames, times):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts, video_frame.time_base = int(round(time * 1000)), milliseconds
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _durations(count: int, durations_ms: int | Sequence[int]) -> list[int]:
    durations = [int(durations_ms)] * count if np.isscalar(durations_ms) else [int(d) for d in durations_ms]
    if len(durations) != count:
        raise ValueError(f"durations_ms must give one duration per frame: {len(durations)} for {count} frames")
    return durations


def write_gif(path: str | os.PathLike, frames: np.ndarray, durations_ms: int | Sequence[int] = 100) -> Path:
    """An animated GIF of ``uint8 [F, H, W, 3]``, frame ``i`` shown ``durations_ms[i]``
    milliseconds (GIF stores hundredths of a second: use multiples of 10)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=_durations(len(frames), durations_ms),
                   loop=0, optimize=False, disposal=1)
    return Path(path)


def write_webp(path: str | os.PathLike, frames: np.ndarray, durations_ms: int | Sequence[int] = 100) -> Path:
    """A lossless animated WebP of ``uint8 [F, H, W, 3]``, frame ``i`` shown ``durations_ms[i]`` ms."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=_durations(len(frames), durations_ms),
                   loop=0, lossless=True, quality=100, method=0)
    return Path(path)


def write_folder(path: str | os.PathLike, frames: np.ndarray, pattern: str = "frame{index}.png") -> Path:
    """One image per frame of ``uint8 [F, H, W, 3]`` in folder ``path`` (created), named by
    ``pattern`` with the frame's index (not zero-padded by default, so name order and natural
    order differ past frame 9)."""
    from PIL import Image

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / pattern.format(index=index))
    return folder
