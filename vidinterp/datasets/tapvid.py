"""TAP-Vid (DAVIS and Kinetics) point-tracking readers, a pickle reader that runs no code, and a
one-time conversion to a folder of ``.npz`` files.

Layouts read:

* TAP-Vid-DAVIS: ``tapvid_davis.pkl``, a pickled dict ``{video name: example}``.
* TAP-Vid-Kinetics: a folder of pickle shards ``*.pkl`` (``0000_of_0010.pkl``, ...), each a
  pickled list of examples (a dict of examples is accepted too); a single shard file also works.
* Either, converted by :func:`convert_tapvid`: a folder of ``<clip_id>.npz`` files (one per
  clip, read with ``allow_pickle=False``; a folder holding any ``.npz`` is read as a conversion), each holding ``points``, ``occluded`` and either
  ``video`` (``uint8 [F, H, W, 3]``) or ``jpeg_bytes`` (``uint8``, the frames' JPEG files
  concatenated) with ``jpeg_offsets`` (``int64 [F + 1]``, frame ``t`` is
  ``jpeg_bytes[offsets[t]:offsets[t + 1]]``).

An example is ``{"video": uint8 [F, H, W, 3] or F JPEG-encoded byte strings (a list, or a numpy
bytes array as the Kinetics script writes it), "points": float [N, F, 2] (x, y) in [0, 1],
"occluded": bool [N, F]}``.

Pickle policy: a pickle can run any code when it is loaded, so pickles are read with
:class:`RestrictedUnpickler`, which resolves only the numpy names needed to rebuild arrays and
dtypes (``ndarray``, ``dtype``, ``_reconstruct``, ``scalar``, ``_frombuffer``) and the builtin
containers ``set``/``frozenset``/``bytearray`` (plus ``_codecs.encode``, used for bytes by
protocol-2 pickles); anything else raises :class:`UnsafePickleError`, which says how to convert
a trusted file. Reading a pickle loads a whole file (a shard) at once; the last file read is
kept in memory, so converting once to ``.npz`` gives truly lazy, per-clip reads.

Records: ``clip_id`` is the video name (DAVIS) or ``<shard stem>__<index>`` (Kinetics list
shards, e.g. ``0000_of_0010__0003``), sanitised; no masks; ``tracks`` = ``points * (W, H)``
(pixels, ``float32 [N, F, 2]``, ``(x, y)``), ``visible`` = ``~occluded``; no concepts;
``caption`` = the ``caption`` argument (default ``"a video"``).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vidinterp.datasets._files import clip_index, layout_error, safe_clip_id, unknown_clip
from vidinterp.datasets.records import ClipRecord, DatasetLayoutError

__all__ = ["TapVidDavisSource", "TapVidKineticsSource", "RestrictedUnpickler", "UnsafePickleError", "load_pickle",
           "convert_tapvid", "LAYOUT"]

LAYOUT = ("a TAP-Vid pickle (tapvid_davis.pkl: {name: example}; Kinetics: a folder of *.pkl shards, each a list of "
          "examples) or a folder of <clip_id>.npz written by convert_tapvid; an example is {'video': uint8 [F, H, W, 3] "
          "or F JPEG byte strings, 'points': float [N, F, 2] (x, y) in [0, 1], 'occluded': bool [N, F]}")

DEFAULT_CAPTION = "a video"


class UnsafePickleError(DatasetLayoutError):
    """A pickle asked for a global that :class:`RestrictedUnpickler` does not allow."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a TAP-Vid pickle may name, as ``(module, name) -> object``; the numpy ones
    under both their numpy-1 (``numpy.core``) and numpy-2 (``numpy._core``) modules."""
    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray, numeric
    else:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):
        allowed |= {(module, "set"): set, (module, "frozenset"): frozenset, (module, "bytearray"): bytearray}
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and builtin containers and refuses every other
    global (functions, classes), so loading runs no code named by the file.

    Args:
        file: the open binary file.
        source: the file's path, for messages.
    """

    def __init__(self, file: io.BufferedIOBase, source: Path):
        super().__init__(file)
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object ``module.name``.

        Raises:
            UnsafePickleError: ``module.name`` is not allowed; the message says how to convert.
        """
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle {module}.{name}: TAP-Vid pickles are read without running code, so "
            "only numpy arrays, numbers, strings, bytes, lists, tuples and dicts are allowed. If you trust this "
            f"file, convert it once with vidinterp.datasets.tapvid.convert_tapvid({str(self.source)!r}, OUT_DIR, "
            f"trusted=True) and open OUT_DIR instead; expected {LAYOUT}")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (pickles of TAP-Vid have none)."""
        raise UnsafePickleError(f"{self.source}: refusing a persistent id in the pickle; expected {LAYOUT}")


def load_pickle(path: str | os.PathLike, trusted: bool = False) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler` (or plain :mod:`pickle` when ``trusted``).

    Raises:
        UnsafePickleError: the pickle names a global that is not allowed.
        DatasetLayoutError: the file is missing, truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise layout_error(path, "file not found", LAYOUT)
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle) if trusted else RestrictedUnpickler(handle, path).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated or foreign files raise many types
        raise layout_error(path, f"cannot unpickle ({type(error).__name__}: {error})", LAYOUT) from error


def _examples(data: Any, stem: str, source: Path) -> list[tuple[str, Any]]:
    """``(key, example)`` pairs of one loaded pickle: a dict's keys, or ``<stem>__<index>`` for a list."""
    if isinstance(data, dict):
        return [(str(key), value) for key, value in data.items()]
    if isinstance(data, (list, tuple)):
        return [(f"{stem}__{i:04d}", value) for i, value in enumerate(data)]
    raise layout_error(source, f"holds a {type(data).__name__}, not a dict or list of examples", LAYOUT)


def _decode_jpegs(encoded: list[bytes], where: str) -> np.ndarray:
    """``uint8 [F, H, W, 3]`` from F JPEG byte strings."""
    from PIL import Image

    frames = []
    for t, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(bytes(data))) as image:
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except Exception as error:
            raise DatasetLayoutError(f"{where}: frame {t} is not a decodable JPEG ({type(error).__name__}: {error}); "
                                     f"expected {LAYOUT}") from error
        if frames[-1].shape != frames[0].shape:
            raise DatasetLayoutError(f"{where}: frame {t} is {frames[-1].shape[:2]} but frame 0 is "
                                     f"{frames[0].shape[:2]}; expected {LAYOUT}")
    if not frames:
        raise DatasetLayoutError(f"{where}: the video has no frames; expected {LAYOUT}")
    return np.stack(frames)


def _video_frames(video: Any, where: str) -> np.ndarray:
    """The frames of an example's ``video``: an array as is, JPEG byte strings decoded."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise DatasetLayoutError(f"{where}: video is uint8 {list(video.shape)}, not [F, H, W, 3]; expected {LAYOUT}")
        return video
    if isinstance(video, (list, tuple, np.ndarray)) and all(isinstance(v, (bytes, bytearray)) for v in video):
        return _decode_jpegs(list(video), where)
    kind = f"{video.dtype} array" if isinstance(video, np.ndarray) else type(video).__name__
    raise DatasetLayoutError(f"{where}: video is a {kind}, not uint8 [F, H, W, 3] or JPEG byte strings; "
                             f"expected {LAYOUT}")


def _tracks(example: Any, num_frames: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(points float [N, F, 2] in [0, 1], occluded bool [N, F])`` of an example, checked."""
    try:
        points = np.asarray(example["points"], dtype=np.float64)
        occluded = np.asarray(example["occluded"]).astype(bool)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetLayoutError(f"{where}: needs 'points' and 'occluded' arrays ({error!r}); "
                                 f"expected {LAYOUT}") from error
    if points.ndim != 3 or points.shape[1:] != (num_frames, 2) or occluded.shape != points.shape[:2]:
        raise DatasetLayoutError(f"{where}: points {list(points.shape)} and occluded {list(occluded.shape)} must be "
                                 f"[N, {num_frames}, 2] and [N, {num_frames}] for a {num_frames}-frame video; "
                                 f"expected {LAYOUT}")
    return points, occluded


def _npz_example(path: Path) -> dict[str, Any]:
    """An example from one converted ``.npz`` (frames kept JPEG-encoded when stored so)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            example = {key: data[key] for key in data.files}
    except Exception as error:
        raise layout_error(path, f"cannot read the .npz ({type(error).__name__}: {error})", LAYOUT) from error
    if "jpeg_bytes" in example:
        blob, offsets = example.pop("jpeg_bytes"), example.pop("jpeg_offsets", None)
        if offsets is None or offsets.ndim != 1 or len(offsets) < 2:
            raise layout_error(path, "has jpeg_bytes without jpeg_offsets [F + 1]", LAYOUT)
        example["video"] = [blob[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    if "video" not in example:
        raise layout_error(path, "has neither 'video' nor 'jpeg_bytes'", LAYOUT)
    return example


def _pickle_files(path: Path) -> list[Path]:
    """The pickle files behind ``path`` (the file itself, or a folder's ``*.pkl`` sorted)."""
    files = [path] if path.is_file() else sorted(path.glob("*.pkl"))
    if not files:
        raise layout_error(path, "holds no *.pkl and no *.npz files", LAYOUT)
    return files


def convert_tapvid(pkl_path: str | os.PathLike, out_dir: str | os.PathLike, trusted: bool = False) -> Path:
    """Convert TAP-Vid pickles (a file, or a folder of shards) once to ``<out_dir>/<clip_id>.npz``.

    Frames given as JPEG bytes stay JPEG-encoded (``jpeg_bytes`` + ``jpeg_offsets``); arrays are
    stored as ``video``. The clips' ids are those the pickle reader gives.

    Args:
        trusted: load with plain :mod:`pickle` (runs any code the file names: only for files
            you trust); by default :class:`RestrictedUnpickler`.

    Returns:
        ``out_dir``, to pass to :class:`TapVidDavisSource` / :class:`TapVidKineticsSource`.

    Raises:
        UnsafePickleError, DatasetLayoutError: as :func:`load_pickle`, or a malformed example.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for file in _pickle_files(Path(pkl_path)):
        for key, example in _examples(load_pickle(file, trusted=trusted), file.stem, file):
            where = f"{file} [{key!r}]"
            clip_id = safe_clip_id(key)
            if clip_id in written:
                raise DatasetLayoutError(f"{where}: gives clip id {clip_id!r} like {written[clip_id]}; ids must be unique")
            written[clip_id] = where
            if not isinstance(example, dict) or "video" not in example:
                raise DatasetLayoutError(f"{where}: an example must be a dict with 'video'; expected {LAYOUT}")
            video = example["video"]
            arrays: dict[str, np.ndarray]
            if isinstance(video, np.ndarray) and video.dtype == np.uint8:
                arrays = {"video": _video_frames(video, where)}
            else:
                encoded = [bytes(v) for v in video]
                arrays = {"jpeg_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
                          "jpeg_offsets": np.cumsum([0] + [len(v) for v in encoded], dtype=np.int64)}
            points, occluded = _tracks(example, len(video), where)
            np.savez(out / f"{clip_id}.npz", points=points, occluded=occluded, **arrays)
    return out


class _TapVidSource:
    """A TAP-Vid release (pickles) or its ``.npz`` conversion; see the module docstring."""

    name = ""

    def __init__(self, path: str | os.PathLike, caption: str = DEFAULT_CAPTION):
        self.root = Path(path)
        self.caption = caption
        if not self.root.exists():
            raise layout_error(self.root, "not found", LAYOUT)
        npz = sorted(self.root.glob("*.npz")) if self.root.is_dir() else []
        self._npz = {path.stem: path for path in npz}
        self._pickles = [] if npz else _pickle_files(self.root)
        self._index: dict[str, tuple[Path, str]] | None = None
        self._loaded: tuple[Path, dict[str, Any]] | None = None

    def _read_pickle(self, file: Path) -> dict[str, Any]:
        """The examples of one pickle file by key; the last file read stays cached."""
        if self._loaded is None or self._loaded[0] != file:
            self._loaded = (file, dict(_examples(load_pickle(file), file.stem, file)))
        return self._loaded[1]

    def _clip_index(self) -> dict[str, tuple[Path, str]]:
        if self._index is None:
            if self._npz:
                self._index = {stem: (path, stem) for stem, path in sorted(self._npz.items())}
            else:
                pairs = [(file, key) for file in self._pickles for key in self._read_pickle(file)]
                self._index = clip_index(pairs, (safe_clip_id(key) for _, key in pairs), self.root)
        return self._index

    def clip_ids(self) -> list[str]:
        """Every clip id, sorted. For ``.npz`` folders this lists files; for pickles it loads each
        pickle file once (decoding no JPEG frames)."""
        return list(self._clip_index())

    def load(self, clip_id: str) -> ClipRecord:
        """Read one clip's frames and tracks (pixels) as a record without masks."""
        index = self._clip_index()
        if clip_id not in index:
            raise unknown_clip(clip_id, self.name, list(index))
        file, key = index[clip_id]
        example = _npz_example(file) if self._npz else self._read_pickle(file)[key]
        where = f"{file}" if self._npz else f"{file} [{key!r}]"
        if not isinstance(example, dict) or "video" not in example:
            raise DatasetLayoutError(f"{where}: an example must be a dict with 'video'; expected {LAYOUT}")
        frames = _video_frames(example["video"], where)
        num_frames, height, width = frames.shape[:3]
        points, occluded = _tracks(example, num_frames, where)
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=frames, masks=np.zeros((0, num_frames, height, width), bool),
            mask_ids=(), mask_names=(), caption=self.caption, concepts=(),
            tracks=(points * np.array([width, height])).astype(np.float32), visible=~occluded,
            attrs={"file": str(file), "key": key})


class TapVidDavisSource(_TapVidSource):
    """TAP-Vid-DAVIS: ``tapvid_davis.pkl`` or its ``.npz`` conversion.

    Args:
        path: the ``.pkl`` file or the converted folder.
        caption: the caption of every clip.
    """

    name = "tapvid_davis"


class TapVidKineticsSource(_TapVidSource):
    """TAP-Vid-Kinetics: a folder of ``*.pkl`` shards (or one shard), or its ``.npz`` conversion.

    Args:
        path: the shard folder, a shard file, or the converted folder.
        caption: the caption of every clip.
    """

    name = "tapvid_kinetics"
