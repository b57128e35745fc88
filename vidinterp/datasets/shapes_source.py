"""Shapes clips as :class:`~vidinterp.datasets.records.ClipRecord` s: a folder written by
:func:`vidinterp.datasets.shapes.write_dataset` (``ShapesSource(path)``) or clips in memory
(``ShapesSource.from_clips(clips)``, e.g. a benchmark's held-out clips generated from seeds).

Record of a clip with ``N`` objects:

* ``masks``: ``bool [N, F, H, W]``, each object's visible pixels; ``mask_ids`` ``0 .. N-1`` (draw
  order), ``mask_names`` ``"<colour> <shape>"``;
* ``concepts``: nouns, colours, then direction words (:attr:`ShapesGroundTruth.concepts`);
  ``concept_masks``: each word's objects (``motion_words``: the direction words). Note that
  :meth:`ClipRecord.concept_mask` of a direction word is its objects on *every* frame, while
  :meth:`ShapesGroundTruth.concept_mask` keeps only the frames where they move; the shapes
  scoring needs the latter, so :func:`ground_truth` rebuilds the exact ground truth from the
  record (``attrs["objects"]`` and ``attrs["moving"]``);
* ``tracks``: ``float32 [N, F, 2]`` box centres in the continuous pixel convention of
  :mod:`vidinterp.tracking` (the shapes convention's integer pixel centres ``+ 0.5``);
  ``visible``: the object has a visible pixel in the frame;
* ``attrs``: ``objects`` (:meth:`ShapeObject.to_dict` each), ``moving`` (``[N][F]`` booleans),
  ``seed``, and for a folder the ``video``/``masks`` file names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vidinterp.datasets.records import ClipRecord, DatasetLayoutError
from vidinterp.datasets.shapes import (
    ManifestEntry, ShapeObject, ShapesClip, ShapesGroundTruth, load_clip, read_manifest,
)

__all__ = ["ShapesSource", "shapes_record", "ground_truth"]

_LAYOUT = "a shapes dataset folder (manifest.json, videos/, masks/) as vidinterp.datasets.shapes.write_dataset writes"


def shapes_record(clip: ShapesClip, clip_id: str, attrs: dict | None = None) -> ClipRecord:
    """The :class:`ClipRecord` of a shapes clip (layout: the module docstring); ``attrs`` are
    added to the record's own."""
    objects = clip.objects
    concept_masks: dict[str, tuple[int, ...]] = {}
    for word in clip.concepts:
        concept_masks[word] = tuple(k for k, obj in enumerate(objects) if word in (obj.shape, obj.color, obj.direction))
    return ClipRecord(
        dataset="shapes",
        clip_id=clip_id,
        frames=np.asarray(clip.frames, dtype=np.uint8),
        masks=np.asarray(clip.masks, dtype=bool),
        mask_ids=tuple(range(len(objects))),
        mask_names=tuple(f"{obj.color} {obj.shape}" for obj in objects),
        caption=clip.caption,
        concepts=tuple(clip.concepts),
        concept_masks=concept_masks,
        motion_words=tuple(clip.motion_words),
        tracks=np.asarray(clip.tracks, dtype=np.float32) + np.float32(0.5),
        visible=np.asarray(clip.masks).any(axis=(2, 3)),
        attrs={"objects": [obj.to_dict() for obj in objects],
               "moving": np.asarray(clip.moving, dtype=bool).tolist(),
               "seed": clip.seed, **(attrs or {})},
    )


def ground_truth(record: ClipRecord) -> ShapesGroundTruth:
    """The exact :class:`ShapesGroundTruth` of a shapes record (also of one fitted by
    :func:`vidinterp.evaluation.fitting.fit_record`: its masks and tracks are the fitted ones,
    and ``moving`` is taken at the fitted clip's source frames, ``attrs["frame_index"]``).

    Raises:
        ValueError: the record is not a shapes record (no ``attrs["objects"]``/``attrs["moving"]``).
    """
    if "objects" not in record.attrs or "moving" not in record.attrs:
        raise ValueError(f"{record.clip_id}: a shapes record carries attrs 'objects' and 'moving' "
                         f"(vidinterp.datasets.shapes_source.shapes_record); got attrs {sorted(record.attrs)} "
                         f"from dataset {record.dataset!r}")
    moving = np.asarray(record.attrs["moving"], dtype=bool).reshape(len(record.mask_ids), -1)
    index = record.attrs.get("frame_index")
    if index is not None:
        moving = moving[:, np.asarray(index, dtype=int)]
    return ShapesGroundTruth(objects=tuple(ShapeObject.from_dict(obj) for obj in record.attrs["objects"]),
                             masks=record.masks, moving=moving,
                             tracks=(record.tracks - 0.5) if record.tracks is not None else None)


class ShapesSource:
    """A shapes dataset as a :class:`~vidinterp.datasets.records.ClipSource` (``name = "shapes"``).

    Args:
        path: a folder written by :func:`~vidinterp.datasets.shapes.write_dataset`, or its
            ``manifest.json``.

    Raises:
        DatasetLayoutError: no readable shapes manifest at ``path`` (the message names the file).
    """

    name = "shapes"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        manifest = self.root / "manifest.json" if self.root.is_dir() else self.root
        if not manifest.is_file():
            raise DatasetLayoutError(f"{manifest} does not exist; expected {_LAYOUT}")
        try:
            entries = read_manifest(manifest)
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetLayoutError(f"{manifest} is not a readable shapes manifest ({error}); expected {_LAYOUT}") from None
        self._entries: dict[str, ManifestEntry] = {entry.id: entry for entry in entries}
        self._clips: dict[str, ShapesClip] = {}

    @classmethod
    def from_clips(cls, clips: Sequence[ShapesClip], ids: Sequence[str] | None = None) -> "ShapesSource":
        """A source over clips in memory; ids default to ``clip_00000``, ``clip_00001``, ... (the
        ids :func:`~vidinterp.datasets.shapes.write_dataset` gives the same clips)."""
        ids = [f"clip_{index:05d}" for index in range(len(clips))] if ids is None else list(ids)
        if len(ids) != len(clips) or len(set(ids)) != len(ids):
            raise ValueError(f"from_clips needs one distinct id per clip: {len(clips)} clips, ids {ids}")
        source = cls.__new__(cls)
        source.root = Path("<memory>")
        source._entries = {}
        source._clips = dict(zip(ids, clips))
        return source

    def clip_ids(self) -> list[str]:
        """Every clip's id, sorted."""
        return sorted([*self._entries, *self._clips])

    def load(self, clip_id: str) -> ClipRecord:
        """Read one clip as a record.

        Raises:
            KeyError: unknown ``clip_id``.
            DatasetLayoutError: its video or mask file is missing or does not decode.
        """
        if clip_id in self._clips:
            return shapes_record(self._clips[clip_id], clip_id)
        if clip_id not in self._entries:
            raise KeyError(f"{clip_id!r} is not a clip of {self.root}; clips: {self.clip_ids()[:5]}...")
        entry = self._entries[clip_id]
        try:
            clip = load_clip(entry)
        except (OSError, ValueError, KeyError) as error:
            raise DatasetLayoutError(f"{clip_id}: cannot read {entry.video.name} / {entry.masks.name} in "
                                     f"{entry.video.parent.parent} ({type(error).__name__}: {error}); expected "
                                     f"{_LAYOUT}") from None
        return shapes_record(clip, clip_id, {"video": entry.video.name, "masks": entry.masks.name})
