"""Video input: any clip, fitted to the model's geometry.

A clip is a video file (mp4, mov, avi, mkv, webm, ... through PyAV), an animated GIF or WebP
(or a still image), a folder of images (natural name order), or frames in memory (a
``[frames, height, width, 3|1|4]`` uint8 array or float array in ``[0, 1]``, or tensor).

**Fitting** (:func:`fit_video`) makes a clip exactly ``num_frames`` frames of ``height x width``
pixels: the frames are picked evenly over the clip's duration, each the frame nearest in time
(container timestamps or GIF/WebP durations where known, else frame indices), and each picked
frame is centre-cropped to the target's aspect ratio (``fit="crop"``, the default) or padded
with black (``fit="pad"``) and resized as soon as it is decoded. Decoding streams: only the
picked frames are ever converted, so a long 1280x720 clip never sits in memory at full size.

**For a trace** (:func:`prepare_video`, what ``vidinterp.trace(video=...)`` runs), the target is
the ``num_frames``/``height``/``width`` given, each one not given taken from the model's native
geometry (``adapter.default_geometry()``), and ``resample`` says what happens to a clip that
does not have it:

* ``None`` or ``"auto"`` (default): a clip that already has the target geometry is used
  unchanged; any other clip is fitted to it with a one-line :class:`VideoResampledWarning`
  saying from what to what (so a clip the model would take at another size, e.g. 720p on a
  model made for 480p, still runs at the model's own geometry).
* ``True``: fit to the target, without the notice.
* ``False``: never change the clip: it must be a geometry the model takes (and match any
  ``num_frames``/``height``/``width`` given); otherwise a ``ValueError`` names the clip's
  geometry, the model's and the fix (``resample=True``, CLI ``--resample``).

Every decoder failure is a :class:`VideoReadError` (a ``ValueError``) naming the path and the
decoder tried; a missing path is a ``FileNotFoundError``.
"""

from __future__ import annotations

import warnings
from os import PathLike
from typing import Literal, Union

import numpy as np
import torch

from vidinterp.adapter import Adapter
from vidinterp.media.arrays import frames_from_array
from vidinterp.media.fitting import FIT_MODES, FitMode, FrameFitter, plan_frame
from vidinterp.media.readers import ArrayReader, ClipInfo, Reader, VideoReadError, open_reader
from vidinterp.media.timing import target_times

__all__ = [
    "read_video",
    "probe_video",
    "fit_video",
    "as_frames",
    "resample_video",
    "prepare_video",
    "to_model_pixels",
    "open_clip",
    "resample_setting",
    "fit_setting",
    "ClipInfo",
    "VideoReadError",
    "VideoResampledWarning",
    "FIT_MODES",
    "Resample",
]

#: What ``resample`` may be: ``True``, ``False``, or ``None`` / ``"auto"`` (the default).
Resample = Union[bool, Literal["auto"], None]


class VideoResampledWarning(UserWarning):
    """A clip was fitted to the model's geometry because ``resample`` was left at its default
    (``None``/``"auto"``). One line: the clip's geometry, the target and how (frames picked,
    crop or pad). ``resample=True`` fits without it; filter it with
    ``warnings.filterwarnings("ignore", category=VideoResampledWarning)``."""


def open_clip(video) -> Reader:
    """A probed :class:`~vidinterp.media.readers.Reader` for a path (file or folder) or for
    frames in memory (checked as :func:`as_frames` does)."""
    if isinstance(video, (str, PathLike)):
        return open_reader(video)
    return ArrayReader(frames_from_array(video))


def probe_video(video) -> ClipInfo:
    """Frame count, size and frame times of a clip without keeping its frames."""
    return open_clip(video).info


def _exactly(reader: Reader):
    """A ``convert`` that keeps frames unchanged and refuses a frame whose size differs from
    the probed one (a stream that changes size mid-way)."""
    size = (reader.info.height, reader.info.width)

    def keep(frame: np.ndarray) -> np.ndarray:
        if frame.shape[:2] != size:
            raise reader.fail(f"a frame is {frame.shape[0]}x{frame.shape[1]}, but the clip starts at "
                              f"{size[0]}x{size[1]}; fit it (resample=True) to bring every frame to one size")
        return frame

    return keep


def read_video(path: str | PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a clip (file or folder of images) at its own size: ``uint8 [frames, height, width,
    3]`` RGB, all frames or the first ``max_frames``. This keeps every frame at full size; to
    fit a long clip to a model use :func:`fit_video`."""
    reader = open_reader(path)
    times = reader.info.times if max_frames is None else reader.info.times[:max(1, int(max_frames))]
    return np.stack(reader.read(times, _exactly(reader)))


def as_frames(video) -> np.ndarray:
    """A path (decoded at its own size, as :func:`read_video`) or an array/tensor/list of frames
    ``[F, H, W, 3|1|4]`` (uint8, or float in ``[0, 1]``) -> ``uint8 [F, H, W, 3]``. Rejects
    anything else with a ``TypeError``/``ValueError`` naming ``video``, what it got and what is
    expected."""
    if isinstance(video, (str, PathLike)):
        return read_video(video)
    return frames_from_array(video)


def _check_size(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (pixels or frames) or None, got {value!r}")
    return int(value)


def fit_setting(fit) -> FitMode:
    """``fit`` checked: ``"crop"`` or ``"pad"``; ``TypeError``/``ValueError`` naming ``fit``
    otherwise."""
    if not isinstance(fit, str):
        raise TypeError(f"fit must be one of {list(FIT_MODES)} (centre crop or pad to the model's aspect ratio; "
                        f"CLI --fit), got {type(fit).__name__} {fit!r}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {list(FIT_MODES)} (centre crop or pad to the model's aspect ratio; "
                         f"CLI --fit), got {fit!r}")
    return fit  # type: ignore[return-value]


def _fitted(reader: Reader, target: tuple[int, int, int], fit: FitMode) -> np.ndarray:
    frames, height, width = target
    times = target_times(reader.info.times, frames)
    return np.stack(reader.read(times, FrameFitter((height, width), fit)))


def fit_video(video, num_frames: int, height: int, width: int, fit: FitMode = "crop") -> np.ndarray:
    """Fit any clip to exactly ``num_frames`` frames of ``height x width`` pixels: frames picked
    evenly over its duration (nearest by time), each centre-cropped (``fit="crop"``) or padded
    with black (``fit="pad"``) to the target aspect and resized as it is decoded.

    Returns ``uint8 [num_frames, height, width, 3]``.
    """
    target = tuple(_check_size(name, value) for name, value in
                   (("num_frames", num_frames), ("height", height), ("width", width)))
    if None in target:
        raise ValueError(f"fit_video needs num_frames, height and width, got {num_frames}, {height}, {width}")
    return _fitted(open_clip(video), target, fit_setting(fit))  # type: ignore[arg-type]


def resample_video(frames, num_frames: int, height: int, width: int, fit: FitMode = "crop") -> np.ndarray:
    """Frames in memory fitted as :func:`fit_video` does; returns ``uint8 [num_frames, height,
    width, 3]``."""
    return fit_video(frames, num_frames, height, width, fit)


def to_model_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8`` ``[F, H, W, 3]`` -> float ``[F, 3, H, W]`` in ``[-1, 1]`` (VAE input range)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def resample_setting(resample) -> bool | None:
    """``resample`` checked: ``True``, ``False`` or ``None`` (``"auto"`` reads as ``None``); a
    ``TypeError`` naming ``resample`` otherwise (``0``/``1`` and strings such as ``"false"`` are
    refused rather than read as true or false)."""
    if resample is None or (isinstance(resample, str) and resample == "auto"):
        return None
    if isinstance(resample, (bool, np.bool_)):
        return bool(resample)
    raise TypeError(f"resample must be True (fit the clip to the model), False (use it as it is) or None/'auto' "
                    f"(fit it with a one-line notice when the model does not take it as it is), got "
                    f"{type(resample).__name__} {resample!r}")


def _geometry_words(geometry: tuple[int, int, int]) -> str:
    frames, height, width = geometry
    return f"{frames} frame{'s' if frames != 1 else ''} at {height}x{width}"


def _given_words(given: tuple[int | None, ...]) -> str:
    return ", ".join(f"{name}={value}" for name, value in zip(("num_frames", "height", "width"), given)
                     if value is not None)


def _model_problem(adapter: Adapter, geometry: tuple[int, int, int]) -> str | None:
    """The model's complaint about ``geometry``, or ``None`` when it takes it."""
    try:
        adapter.check_geometry(*geometry)
    except ValueError as error:
        return str(error)
    return None


def _notice(info: ClipInfo, target: tuple[int, int, int], fit: FitMode, model: str) -> str:
    frames, height, width = target
    if frames == info.frames:
        picked = "all frames"
    else:
        span = f"{info.times[-1] - info.times[0]:.3g} s" if info.fps else "the clip"
        picked = f"{frames} of {info.frames} frames picked evenly over {span}"
    spatial = plan_frame((info.height, info.width), (height, width), fit).describe()
    return (f"fitted video {info.source!r} to {model}: {info.describe()} -> {_geometry_words(target)} ({picked}; "
            f"{spatial}); pass resample=True to fit without this notice, resample=False to refuse")


def prepare_video(adapter: Adapter, video, num_frames: int | None = None, height: int | None = None,
                  width: int | None = None, resample: Resample = None, fit: FitMode = "crop") -> np.ndarray:
    """The clip ``video`` as the trace renoises it: ``uint8 [F, H, W, 3]`` at a geometry the
    model takes (see the module docstring for ``resample``; ``fit`` is ``"crop"`` or ``"pad"``).

    The target is ``(num_frames, height, width)`` with each value not given taken from
    ``adapter.default_geometry()``; it is checked against the model before the clip is opened.

    Raises:
        ValueError: bad arguments, a target the model does not take, or (``resample=False``) a
            clip that does not fit as it is; :class:`VideoReadError` when decoding fails.
        FileNotFoundError: a path that does not exist.
        TypeError: a ``video`` that is no path, array or tensor, or an array of the wrong dtype.
    """
    mode = resample_setting(resample)
    fit = fit_setting(fit)
    given = tuple(_check_size(name, value) for name, value in
                  (("num_frames", num_frames), ("height", height), ("width", width)))
    model = adapter.geometry().model
    target = tuple(size if size is not None else native for size, native in zip(given, adapter.default_geometry()))
    if mode is not False:
        problem = _model_problem(adapter, target)
        if problem is not None:
            raise ValueError(
                f"{problem}; the clip is fitted to {_geometry_words(target)} "
                f"({_given_words(given) or 'nothing given'}; the native geometry fills in the rest): "
                f"give num_frames/height/width the model takes"
            )
    reader = open_clip(video)
    info = reader.info
    if mode is False:
        kept = tuple(size if size is not None else own for size, own in zip(given, info.geometry))
        if kept != info.geometry:
            raise ValueError(
                f"video {info.source!r} is {info.describe()}, but {_given_words(given)} were asked for "
                f"({_geometry_words(kept)}); resample=False uses a clip as it is: pass resample=True "
                f"(CLI: --resample) to fit it"
            )
        problem = _model_problem(adapter, info.geometry)
        if problem is not None:
            raise ValueError(
                f"video {info.source!r} is {info.describe()}, which {model} does not take as it is: {problem}; "
                f"resample=False uses a clip as it is: pass resample=True (CLI: --resample) to fit it to "
                f"{_geometry_words(target)} (or to num_frames/height/width)"
            )
        return np.stack(reader.read(info.times, _exactly(reader)))
    if info.geometry == target:
        return np.stack(reader.read(info.times, _exactly(reader)))
    frames = _fitted(reader, target, fit)  # type: ignore[arg-type]
    if mode is None:
        warnings.warn(_notice(info, target, fit, model), VideoResampledWarning, stacklevel=3)
    return frames
