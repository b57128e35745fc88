"""Decoding clips frame by frame behind one interface, :class:`Reader`.

* :class:`PyAVReader`: video files through PyAV (ffmpeg): mp4, mov, avi, mkv, webm, ...
* :class:`ImageFileReader`: animated GIF, animated WebP and APNG through PIL, and still images
  (PNG, JPEG, WebP, BMP, TIFF: a video of one frame).
* :class:`FolderReader`: a folder of images, one frame each, in natural name order
  (``frame2.png`` before ``frame10.png``).
* :class:`ArrayReader`: frames already in memory.

:func:`open_reader` chooses by what a path is: a folder, or a file's first bytes (not its name).
A reader first probes the clip without keeping frames (:class:`ClipInfo`: frame count, size,
frame times), then :meth:`Reader.read` decodes it once more and keeps only the frames nearest to
the requested times, each passed through ``convert`` (e.g. a resize) as soon as it is decoded,
so a long high-resolution clip never sits in memory at full size.

Every failure of a decoder (corrupt, truncated, empty or foreign files, unreadable folders, mixed
image sizes) is raised as :class:`VideoReadError`, a ``ValueError`` whose message names the path
and the decoder tried. A clip that decodes in part (a video with some undecodable packets, an
animated image cut short) gives the frames that could be read and one
:class:`VideoReadWarning`.
"""

from __future__ import annotations

import os
import re
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vidinterp.media.timing import NearestPicker, nearest_indices

__all__ = ["VideoReadError", "VideoReadWarning", "ClipInfo", "Reader", "IndexedReader", "PyAVReader", "ImageFileReader", "FolderReader",
           "ArrayReader", "open_reader", "natural_key", "pil_rgb", "IMAGE_SUFFIXES"]

#: Files a folder of frames may hold (others, and hidden files, are ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# First bytes of the formats PIL reads (animated GIF/WebP/APNG and still images); anything else
# goes to PyAV.
_IMAGE_MAGIC = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)

Convert = Callable[[np.ndarray], np.ndarray]


class VideoReadError(ValueError):
    """A clip could not be decoded. The message names the path and the decoder that was tried."""


class VideoReadWarning(UserWarning):
    """A clip was decoded only in part: some packets could not be decoded (skipped), or an
    animated image ends early (truncated); the frames are picked from what could be read."""


@dataclass(frozen=True)
class ClipInfo:
    """What a probe learns about a clip without keeping its frames.

    Attributes:
        source: the path (or ``"array"``), for messages.
        reader: the decoder, e.g. ``"PyAV (ffmpeg)"``.
        frames: number of frames.
        height, width: frame size in pixels.
        times: ``float64 [frames]``, increasing: seconds from the first frame when the source
            knows its timing (container timestamps, GIF/WebP frame durations), else frame
            indices ``0, 1, 2, ...``.
        fps: nominal frame rate in frames per second, or ``None`` when the source has no timing.
    """

    source: str
    reader: str
    frames: int
    height: int
    width: int
    times: np.ndarray
    fps: float | None

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(frames, height, width)``."""
        return self.frames, self.height, self.width

    def describe(self) -> str:
        """E.g. ``"132 frames at 720x1280 (25 fps)"`` (height x width)."""
        rate = f" ({self.fps:.4g} fps)" if self.fps else ""
        return f"{self.frames} frame{'s' if self.frames != 1 else ''} at {self.height}x{self.width}{rate}"


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Reader(ABC):
    """One clip: :attr:`info` from the probe, :meth:`read` to decode the frames nearest to
    given times."""

    #: The decoder's name in messages.
    decoder: str = "reader"

    def __init__(self, path: Path | None):
        self.path = path
        self.info = self._probe()

    @property
    def source(self) -> str:
        return "array" if self.path is None else str(self.path)

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Re-raise any decoder exception as :class:`VideoReadError` naming the path, what was
        being done and the decoder."""
        try:
            yield
        except VideoReadError:
            raise
        except Exception as error:  # decoders raise anything: av.error.*, OSError, SyntaxError, struct.error ...
            raise VideoReadError(
                f"cannot read video {self.source!r}: {doing} with {self.decoder} failed ({_describe_error(error)})"
            ) from error

    def fail(self, problem: str) -> VideoReadError:
        """A :class:`VideoReadError` for ``problem`` found in the clip."""
        return VideoReadError(f"cannot read video {self.source!r} with {self.decoder}: {problem}")

    def warn_partial(self, problem: str) -> None:
        """One :class:`VideoReadWarning` that the clip was read only in part."""
        warnings.warn(f"video {self.source!r} read in part with {self.decoder}: {problem}", VideoReadWarning,
                      stacklevel=2)

    @abstractmethod
    def _probe(self) -> ClipInfo:
        """Count the frames and read their size and times, keeping no frame."""

    @abstractmethod
    def read(self, times: np.ndarray, convert: Convert) -> list[np.ndarray]:
        """For every time in the increasing ``times`` (``float64``, units of :attr:`ClipInfo.times`),
        the nearest frame (ties: the earlier) passed through ``convert`` (``uint8 [h, w, 3]`` ->
        the kept frame) as soon as it is decoded. A frame picked for several times is decoded
        and converted once (the list repeats it)."""


class IndexedReader(Reader):
    """A reader whose probe knows every frame's time exactly, so the picks are frame indices
    decided before decoding, and only those frames are decoded."""

    @abstractmethod
    def _decode(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, uint8 [height, width, 3])`` for each of the increasing ``indices``,
        decoding nothing after the last one."""

    def read(self, times: np.ndarray, convert: Convert) -> list[np.ndarray]:
        picks = nearest_indices(self.info.times, times)
        distinct = sorted(set(int(index) for index in picks))
        kept: dict[int, np.ndarray] = {}
        for index, frame in self._decode(distinct):
            kept[index] = convert(frame)
        missing = [index for index in distinct if index not in kept]
        if missing:
            raise self.fail(f"frames {missing[:5]} of the {self.info.frames} probed could not be decoded")
        return [kept[int(index)] for index in picks]


# ------------------------------------------------------------------ video files (PyAV)
class PyAVReader(Reader):
    """Video files through PyAV (ffmpeg), the first video stream.

    The probe reads packet timestamps without decoding (falling back to a decoding pass for
    streams without timestamps); :meth:`read` decodes with the stream's own timestamps and picks
    frames by time (:class:`~vidinterp.media.timing.NearestPicker`), stopping once every target
    time is past.
    """

    decoder = "PyAV (ffmpeg)"

    def _open(self):
        import av

        with self.errors("opening the container"):
            container = av.open(str(self.path), metadata_errors="replace")
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            container.close()
            raise self.fail(f"the file holds no video stream (streams: {', '.join(kinds)})")
        if container.streams.video[0].codec_context is None:
            container.close()
            raise self.fail("this ffmpeg build has no decoder for the file's video codec")
        return container

    def _probe(self) -> ClipInfo:
        container = self._open()
        try:
            stream = container.streams.video[0]
            with self.errors("reading the stream header"):
                height, width = int(stream.codec_context.height or 0), int(stream.codec_context.width or 0)
                time_base = stream.time_base
                rate = stream.average_rate or stream.guessed_rate
            pts: list[int] = []
            timed = time_base is not None
            with self.errors("reading packets"):
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    if packet.pts is None:
                        timed = False
                        break
                    pts.append(int(packet.pts))
        finally:
            container.close()
        fps = float(rate) if rate else None
        if timed and pts and height and width:
            unique = np.unique(np.asarray(pts, dtype=np.int64))
            self._first_pts = int(unique[0])
            self._time_base = float(time_base)
            times = (unique - unique[0]).astype(np.float64) * self._time_base
            if fps is None and len(times) > 1 and times[-1] > 0:
                fps = (len(times) - 1) / times[-1]
            self._step = 1 / fps if fps else 1.0
            return ClipInfo(self.source, self.decoder, len(times), height, width, times, fps)
        return self._probe_by_decoding(fps)

    def _probe_by_decoding(self, fps: float | None) -> ClipInfo:
        """Count frames by decoding them (streams whose packets carry no timestamps)."""
        self._first_pts, self._time_base, self._step = None, None, (1 / fps if fps else 1.0)
        times: list[float] = []
        size = None
        for time, frame in self._frames():
            times.append(time)
            size = size or (frame.height, frame.width)
        if not times:
            raise self.fail("no frame could be decoded" + (f": {'; '.join(self.trouble)}" if self.trouble else ""))
        if fps is None:
            times = list(range(len(times)))  # no timing at all: frame indices
        return ClipInfo(self.source, self.decoder, len(times), size[0], size[1], np.asarray(times, np.float64), fps)

    def _frames(self) -> Iterator[tuple[float, object]]:
        """``(time, av.VideoFrame)`` in presentation order, times made increasing (a frame
        without a usable timestamp is one frame step after the previous). Packets the decoder
        refuses are skipped and a demuxer failure after some frames ends the stream; both are
        recorded in :attr:`trouble` for one warning."""
        import av

        self.trouble: list[str] = []
        container = self._open()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            with self.errors("starting the demuxer"):
                packets = container.demux(stream)
            previous, yielded, skipped = None, 0, 0
            while True:
                try:
                    packet = next(packets, None)
                except Exception as error:  # a damaged container: keep what came before
                    if not yielded:
                        raise VideoReadError(f"cannot read video {self.source!r}: reading packets with "
                                             f"{self.decoder} failed ({_describe_error(error)})") from error
                    self.trouble.append(f"the container breaks off after {yielded} frames "
                                        f"({_describe_error(error)})")
                    packet = None
                try:
                    frames = stream.codec_context.decode(packet)  # None flushes the decoder
                except av.error.EOFError:  # flushed already: the end
                    frames = []
                except av.error.FFmpegError as error:
                    skipped += 1
                    if skipped == 1:
                        self.trouble.append(f"packets the decoder refused were skipped (first: {_describe_error(error)})")
                    frames = []
                for frame in frames:
                    time = None
                    if frame.pts is not None and self._time_base is not None:
                        time = (int(frame.pts) - self._first_pts) * self._time_base
                    if time is None or (previous is not None and time <= previous):
                        time = 0.0 if previous is None else previous + self._step
                    previous = time
                    yielded += 1
                    yield time, frame
                if packet is None:
                    return
        finally:
            container.close()

    def _rgb(self, frame) -> np.ndarray:
        with self.errors("converting a frame to RGB"):
            return frame.to_ndarray(format="rgb24")

    def read(self, times: np.ndarray, convert: Convert) -> list[np.ndarray]:
        picker: NearestPicker = NearestPicker(times, lambda frame: convert(self._rgb(frame)))
        frames = self._frames()
        for time, frame in frames:
            picker.offer(time, frame)
            if picker.done:
                break
        frames.close()
        picked = picker.finish()
        if picked is None:
            raise self.fail("no frame could be decoded" + (f": {'; '.join(self.trouble)}" if self.trouble else ""))
        if self.trouble:
            self.warn_partial("; ".join(self.trouble))
        return picked


# ------------------------------------------------------------------ images (PIL)
def pil_rgb(image) -> np.ndarray:
    """A PIL image -> ``uint8 [height, width, 3]``; transparency is composited over black."""
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3:].astype(np.uint16)
        return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


class ImageFileReader(IndexedReader):
    """Animated GIF, animated WebP, APNG and still images through PIL. Frame times come from
    the frames' durations when every frame has a positive one, else they are frame indices."""

    decoder = "PIL (Pillow)"

    def _open(self):
        from PIL import Image

        with self.errors("opening the image"):
            return Image.open(self.path)

    def _probe(self) -> ClipInfo:
        durations: list[float | None] = []
        with self._open() as image:
            with self.errors("reading the image header"):
                width, height = image.size
            try:
                expected = int(getattr(image, "n_frames", 1))
            except Exception:  # a damaged animation: count by reading
                expected = None
            problem = None
            while True:
                try:
                    image.seek(len(durations))
                    image.load()  # WebP sets a frame's duration only once it is decoded
                except EOFError as error:
                    if not durations:
                        raise VideoReadError(f"cannot read video {self.source!r}: decoding frame 0 with {self.decoder} "
                                             f"failed ({_describe_error(error)})") from error
                    break
                except Exception as error:
                    if not durations:
                        raise VideoReadError(f"cannot read video {self.source!r}: decoding frame 0 with {self.decoder} "
                                             f"failed ({_describe_error(error)})") from error
                    problem = _describe_error(error)
                    break
                duration = image.info.get("duration")
                durations.append(float(duration) if isinstance(duration, (int, float)) else None)
        count = len(durations)
        if width < 1 or height < 1:
            raise self.fail(f"its frames are {height}x{width} pixels")
        if problem is not None or (expected is not None and count < expected):
            of = f" of {expected}" if expected is not None else ""
            self.warn_partial(f"only the first {count}{of} frames could be decoded"
                              + (f" ({problem})" if problem else ""))
        if all(duration is not None and duration > 0 for duration in durations):
            seconds = np.asarray(durations, dtype=np.float64) / 1000
            times = np.concatenate([[0.0], np.cumsum(seconds)[:-1]])
            fps = float(count / seconds.sum())
        else:
            times, fps = np.arange(count, dtype=np.float64), None
        return ClipInfo(self.source, self.decoder, count, height, width, times, fps)

    def _decode(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        wanted = set(indices)
        with self._open() as image:
            for index in range(indices[-1] + 1):
                with self.errors(f"decoding frame {index}"):
                    image.seek(index)
                    frame = pil_rgb(image) if index in wanted else None
                if frame is not None:
                    if frame.shape[:2] != (self.info.height, self.info.width):
                        raise self.fail(f"frame {index} is {frame.shape[0]}x{frame.shape[1]}, the image "
                                        f"{self.info.height}x{self.info.width}")
                    yield index, frame


# ------------------------------------------------------------------ folders of images
def natural_key(name: str) -> list:
    """Sort key that orders the digits in names by value (``frame2`` before ``frame10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


class FolderReader(IndexedReader):
    """A folder of images (PNG, JPEG, WebP, BMP, TIFF), one frame each, in natural name order;
    hidden files and other files are ignored; every image must have the same size. Frame times
    are indices. Only the picked images are decoded."""

    decoder = "PIL (Pillow), image folder"

    def _probe(self) -> ClipInfo:
        from PIL import Image

        try:
            entries = [entry for entry in os.scandir(self.path)]
        except OSError as error:
            raise VideoReadError(f"cannot read video folder {self.source!r}: listing it failed "
                                 f"({_describe_error(error)})") from error
        names = sorted((entry.name for entry in entries if not entry.name.startswith(".")
                        and entry.name.lower().endswith(IMAGE_SUFFIXES)), key=natural_key)
        if not names:
            others = sorted(entry.name for entry in entries)
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "") if others else "nothing"
            raise VideoReadError(f"cannot read video folder {self.source!r}: it holds no images "
                                 f"({'/'.join(IMAGE_SUFFIXES)}); it holds {listed}")
        self.files = [self.path / name for name in names]
        size = None
        for file in self.files:
            with self.errors(f"reading the header of {file.name!r}"):
                with Image.open(file) as image:
                    current = image.size
            if size is None:
                size, first = current, file.name
            elif current != size:
                raise self.fail(f"images differ in size: {first!r} is {size[1]}x{size[0]} but {file.name!r} is "
                                f"{current[1]}x{current[0]} (height x width); every frame must have one size")
        return ClipInfo(self.source, self.decoder, len(self.files), size[1], size[0],
                        np.arange(len(self.files), dtype=np.float64), None)

    def _decode(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        from PIL import Image

        for index in indices:
            file = self.files[index]
            with self.errors(f"decoding {file.name!r}"):
                with Image.open(file) as image:
                    frame = pil_rgb(image)
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise self.fail(f"{file.name!r} decodes to {frame.shape[0]}x{frame.shape[1]}, its header said "
                                f"{self.info.height}x{self.info.width}")
            yield index, frame


# ------------------------------------------------------------------ arrays
class ArrayReader(IndexedReader):
    """Frames already in memory, ``uint8 [frames, height, width, 3]``; times are indices."""

    decoder = "array"

    def __init__(self, frames: np.ndarray):
        self.frames = frames
        super().__init__(None)

    def _probe(self) -> ClipInfo:
        count, height, width = self.frames.shape[:3]
        return ClipInfo("array", self.decoder, count, height, width, np.arange(count, dtype=np.float64), None)

    def _decode(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for index in indices:
            yield index, self.frames[index]


# ------------------------------------------------------------------ choosing a reader
def _sniff(path: Path) -> str:
    """``"image"`` for a file PIL reads (by its first bytes), else ``"video"``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise VideoReadError(f"cannot read video {str(path)!r}: opening it failed ({_describe_error(error)})") from error
    if not head:
        raise VideoReadError(f"cannot read video {str(path)!r}: the file is empty (0 bytes)")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    return "image" if any(head.startswith(magic) for magic, _ in _IMAGE_MAGIC) else "video"


def open_reader(path: str | os.PathLike) -> Reader:
    """The reader for a path: a folder of images, an image file (GIF, WebP, PNG, JPEG, BMP,
    TIFF, recognised by their first bytes) or any other file through PyAV. The clip is probed.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        VideoReadError: the path cannot be decoded.
    """
    path = Path(path)
    if path.is_dir():
        return FolderReader(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    if not path.is_file():
        raise VideoReadError(f"cannot read video {str(path)!r}: it is neither a regular file nor a folder")
    return ImageFileReader(path) if _sniff(path) == "image" else PyAVReader(path)
