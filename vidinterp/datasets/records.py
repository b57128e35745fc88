"""The clip record every dataset reader produces, and the protocol of a dataset on disk.

A reader turns one dataset's release layout into :class:`ClipRecord` s: frames, per-frame masks
with ids, the caption to prompt with, the concept words to trace and which masks each names,
motion words, and point tracks where the dataset has them. An image dataset gives one-frame
clips. The evaluation runner (:mod:`vidinterp.evaluation`) only sees records, so one code path
serves the synthetic shapes clips and every real dataset.

A dataset is opened lazily: :meth:`ClipSource.clip_ids` lists the clips without reading them,
and :meth:`ClipSource.load` reads one, so a sharded or resumed run reads only its own clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ClipRecord", "ClipSource", "DatasetLayoutError"]


class DatasetLayoutError(ValueError):
    """A path does not hold the layout a reader expects; the message names the missing or bad file
    and the layout the reader wants."""


@dataclass(frozen=True)
class ClipRecord:
    """One clip of an evaluation dataset (an image is a one-frame clip).

    Attributes:
        dataset: the reader's name (``"mevis"``, ``"davis2017"``, ``"vspw"``, ``"imagenet_seg"``,
            ``"voc2012"``, ``"tapvid_davis"``, ``"tapvid_kinetics"``, ``"shapes"``).
        clip_id: unique within the dataset, safe as a file name stem (``[A-Za-z0-9._-]``, ``/``
            replaced by ``__``).
        frames: ``uint8 [F, H, W, 3]`` RGB frames.
        masks: ``bool [N, F, H, W]``, one mask per annotated object or class (N may be 0).
        mask_ids: ``N`` ids of the masks (object ids, or class ids for semantic datasets).
        mask_names: ``N`` names of the masks (class names; ``""`` where the dataset has none).
        caption: the text the model is prompted with.
        concepts: the words to trace, in order.
        concept_masks: for each concept, the ids (from ``mask_ids``) of the masks it names;
            a concept with no entry has no ground truth (scored only by a judge, or not at all).
        motion_words: the subset of ``concepts`` that name motions.
        tracks: ``float32 [points, F, 2]`` ground-truth point positions ``(x, y)`` in pixels, or
            ``None``.
        visible: ``bool [points, F]``, whether each track point is visible, or ``None``.
        ignore: ``bool [F, H, W]`` pixels excluded from scoring (void/boundary labels), or ``None``.
        attrs: reader-specific provenance (source file names, expression ids, fps); JSON-able.
    """

    dataset: str
    clip_id: str
    frames: np.ndarray
    masks: np.ndarray
    mask_ids: tuple[int, ...]
    mask_names: tuple[str, ...]
    caption: str
    concepts: tuple[str, ...]
    concept_masks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    motion_words: tuple[str, ...] = ()
    tracks: np.ndarray | None = None
    visible: np.ndarray | None = None
    ignore: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{self.clip_id}: frames must be uint8 [F, H, W, 3]; got {frames.dtype} {frames.shape}")
        num_frames, height, width = frames.shape[:3]
        masks = np.asarray(self.masks)
        if masks.dtype != bool or masks.ndim != 4 or masks.shape[1:] != (num_frames, height, width):
            raise ValueError(f"{self.clip_id}: masks must be bool [N, {num_frames}, {height}, {width}]; "
                             f"got {masks.dtype} {masks.shape}")
        if not len(self.mask_ids) == len(self.mask_names) == masks.shape[0]:
            raise ValueError(f"{self.clip_id}: {masks.shape[0]} masks need as many mask_ids and mask_names; "
                             f"got {len(self.mask_ids)} and {len(self.mask_names)}")
        unknown = {c: ids for c, ids in self.concept_masks.items()
                   if c not in self.concepts or not set(ids) <= set(self.mask_ids)}
        if unknown:
            raise ValueError(f"{self.clip_id}: concept_masks must map concepts {list(self.concepts)} to mask ids "
                             f"{list(self.mask_ids)}; got {unknown}")
        if not set(self.motion_words) <= set(self.concepts):
            raise ValueError(f"{self.clip_id}: motion_words {list(self.motion_words)} must be among the concepts "
                             f"{list(self.concepts)}")
        if self.ignore is not None and np.shape(self.ignore) != (num_frames, height, width):
            raise ValueError(f"{self.clip_id}: ignore must be bool [{num_frames}, {height}, {width}]; "
                             f"got {np.shape(self.ignore)}")
        if self.tracks is not None:
            tracks = np.asarray(self.tracks)
            if tracks.ndim != 3 or tracks.shape[1:] != (num_frames, 2):
                raise ValueError(f"{self.clip_id}: tracks must be [points, {num_frames}, 2]; got {tracks.shape}")
            if self.visible is not None and np.shape(self.visible) != tracks.shape[:2]:
                raise ValueError(f"{self.clip_id}: visible must be bool {list(tracks.shape[:2])}; "
                                 f"got {np.shape(self.visible)}")

    @property
    def num_frames(self) -> int:
        """F, the number of frames."""
        return int(self.frames.shape[0])

    def concept_mask(self, concept: str) -> np.ndarray:
        """``bool [F, H, W]``: the union of the masks ``concept`` names.

        Raises:
            KeyError: ``concept`` has no ground truth in this clip (not in ``concept_masks``).
        """
        if concept not in self.concept_masks:
            raise KeyError(f"{self.clip_id}: concept {concept!r} has no ground-truth mask; concepts with masks are "
                           f"{sorted(self.concept_masks)}")
        selected = np.isin(np.asarray(self.mask_ids), self.concept_masks[concept])
        return np.any(self.masks[selected], axis=0) if selected.any() else np.zeros(self.masks.shape[1:], dtype=bool)


@runtime_checkable
class ClipSource(Protocol):
    """A dataset on disk, opened by a reader (``vidinterp.datasets.open_dataset(name, path)``).

    Attributes:
        name: the reader's name, as in :attr:`ClipRecord.dataset`.
        root: the folder (or file) the user passed.
    """

    name: str

    def clip_ids(self) -> list[str]:
        """Every clip's id, in a fixed order (sorted), without reading frames."""
        ...

    def load(self, clip_id: str) -> ClipRecord:
        """Read one clip.

        Raises:
            KeyError: ``clip_id`` is not in :meth:`clip_ids`.
            DatasetLayoutError: a file of the clip is missing or cannot be decoded (the message
                names it); the runner records it as that clip's error and goes on.
        """
        ...
