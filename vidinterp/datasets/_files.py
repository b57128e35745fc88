"""File helpers the dataset readers share: RGB frames, label PNGs, JSON/list files, clip ids.

Every helper raises :class:`~vidinterp.datasets.records.DatasetLayoutError` for a missing or
undecodable file; the message names the file and ends with the layout the reader expects
(``layout``, a one-line description each reader passes in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vidinterp.datasets.records import DatasetLayoutError
from vidinterp.media.readers import pil_rgb

__all__ = ["layout_error", "read_rgb", "read_rgb_frames", "read_label_png", "read_json", "read_id_list",
           "safe_clip_id", "clip_index", "unknown_clip", "indexed_clip", "list_caption", "words_of_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

T = TypeVar("T")


def layout_error(path: str | Path, problem: str, layout: str) -> DatasetLayoutError:
    """The error for ``path``: ``"<path>: <problem>; expected <layout>"``."""
    return DatasetLayoutError(f"{path}: {problem}; expected {layout}")


def read_rgb(path: Path, layout: str) -> np.ndarray:
    """Decode one image file (JPEG, PNG, ...) to ``uint8 [H, W, 3]`` RGB as every vidinterp image
    reader does (:func:`vidinterp.media.readers.pil_rgb`: 16-bit grey scaled to 8 bits,
    transparency composited over black).

    Raises:
        DatasetLayoutError: the file is missing or cannot be decoded.
    """
    from PIL import Image

    if not path.is_file():
        raise layout_error(path, "file not found", layout)
    try:
        with Image.open(path) as image:
            return np.array(pil_rgb(image), dtype=np.uint8)
    except Exception as error:  # PIL raises many types for damaged files
        raise layout_error(path, f"cannot decode the image ({type(error).__name__}: {error})", layout) from error


def read_rgb_frames(paths: Sequence[Path], layout: str, source: Path) -> np.ndarray:
    """Decode image files into ``uint8 [F, H, W, 3]``; every frame must have the first one's size.

    Args:
        source: where the frames were listed (a folder or index file), named when there are none.

    Raises:
        DatasetLayoutError: a file is missing, undecodable or of another size, or ``paths`` is empty.
    """
    if not paths:
        raise layout_error(source, "lists no frames", layout)
    frames = [read_rgb(path, layout) for path in paths]
    for path, frame in zip(paths, frames):
        if frame.shape != frames[0].shape:
            raise layout_error(path, f"frame is {frame.shape[0]}x{frame.shape[1]} but {paths[0].name} is "
                               f"{frames[0].shape[0]}x{frames[0].shape[1]} (height x width)", layout)
    return np.stack(frames)


def read_label_png(path: Path, layout: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label PNG (palette ``P`` or greyscale ``L`` mode) as its raw pixel values, ``uint8 [H, W]``.

    For a palette PNG the values are the palette indices (object or class ids), not colours.

    Args:
        shape: ``(H, W)`` the labels must have (the frame's size), or ``None``.

    Raises:
        DatasetLayoutError: the file is missing, undecodable, in a colour mode (``RGB``: the labels
            were converted to colours), or not of ``shape``.
    """
    from PIL import Image

    if not path.is_file():
        raise layout_error(path, "file not found", layout)
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image, dtype=np.uint8).copy() if mode in ("P", "L") else None
    except Exception as error:
        raise layout_error(path, f"cannot decode the label image ({type(error).__name__}: {error})", layout) from error
    if labels is None:
        raise layout_error(path, f"label image has mode {mode!r}; labels must be a palette ('P') or greyscale ('L') "
                           "PNG whose pixel values are the ids", layout)
    if shape is not None and labels.shape != tuple(shape):
        raise layout_error(path, f"labels are {labels.shape[0]}x{labels.shape[1]} but the frame is "
                           f"{shape[0]}x{shape[1]} (height x width)", layout)
    return labels


def read_json(path: Path, layout: str) -> Any:
    """Parse a JSON file.

    Raises:
        DatasetLayoutError: the file is missing or not valid JSON.
    """
    if not path.is_file():
        raise layout_error(path, "file not found", layout)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise layout_error(path, f"cannot parse JSON ({error})", layout) from error


def read_id_list(path: Path, layout: str) -> list[str]:
    """The non-empty, stripped lines of a split list (``train.txt``, ``val.txt``, ...).

    Raises:
        DatasetLayoutError: the file is missing or unreadable.
    """
    if not path.is_file():
        raise layout_error(path, "file not found", layout)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise layout_error(path, f"cannot read the list ({error})", layout) from error
    return [line.strip() for line in lines if line.strip()]


def safe_clip_id(name: str) -> str:
    """A clip id safe as a file stem: ``/`` becomes ``__``, any other character outside
    ``[A-Za-z0-9._-]`` becomes ``_``."""
    return _UNSAFE.sub("_", name.replace("/", "__"))


def clip_index(keys: Iterable[Any], ids: Iterable[str], where: str | Path) -> dict[str, Any]:
    """Map sanitised clip ids to the dataset's own keys, sorted by id.

    Raises:
        DatasetLayoutError: two keys sanitise to the same id (the message names both).
    """
    index: dict[str, Any] = {}
    for key, clip_id in zip(keys, ids):
        if clip_id in index:
            raise DatasetLayoutError(f"{where}: entries {index[clip_id]!r} and {key!r} both give clip id "
                                     f"{clip_id!r}; clip ids must be unique")
        index[clip_id] = key
    return dict(sorted(index.items()))


def unknown_clip(clip_id: str, dataset: str, known: Sequence[str]) -> KeyError:
    """The ``KeyError`` for a clip id a source does not hold (lists a few known ids)."""
    shown = ", ".join(repr(k) for k in list(known)[:5]) + (", ..." if len(known) > 5 else "")
    return KeyError(f"{dataset}: no clip {clip_id!r}; the {len(known)} clips include {shown or 'nothing'}")


def indexed_clip(index: Mapping[str, T], clip_id: str, dataset: str) -> T:
    """``index[clip_id]``, or the :func:`unknown_clip` ``KeyError`` when the source holds no such clip."""
    if clip_id not in index:
        raise unknown_clip(clip_id, dataset, list(index))
    return index[clip_id]


def list_caption(words: Sequence[str], empty: str = "a scene") -> str:
    """A caption naming ``words``: ``"dog"``, ``"dog and person"``, ``"bus, car and person"``;
    ``empty`` when there are none."""
    if not words:
        return empty
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def words_of_name(name: str) -> str:
    """A dataset name as plain words: ``"traffic_light"`` -> ``"traffic light"``,
    ``"bike-packing"`` -> ``"bike packing"``, ``"Playground_slide"`` -> ``"playground slide"``."""
    return " ".join(re.split(r"[_\-\s]+", name.strip().lower())).strip()
