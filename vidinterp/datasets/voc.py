"""PASCAL VOC 2012 semantic segmentation reader: one one-frame clip per image, one mask per class.

Layout read (``root`` may be the folder holding ``VOCdevkit``, the ``VOCdevkit`` folder, or the
``VOC2012`` folder itself)::

    <VOC2012>/ImageSets/Segmentation/<split>.txt   one image id per line
    <VOC2012>/JPEGImages/<id>.jpg
    <VOC2012>/SegmentationClass/<id>.png           palette PNG: 0 background, 1..20 classes, 255 void

Records: ``clip_id`` is the image id (``2007_000033``); one mask per class present (ascending
class ids; ``mask_names`` are the official names, :data:`CLASSES`); ``concepts`` are the names
as words (:data:`CONCEPT_WORDS`: ``"potted plant"``, ``"tv monitor"``, ...), each mapped to its
class; ``caption`` lists them (``"dog and person"``); ``ignore`` = the void (255) pixels
(object boundaries); no motion words.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidinterp.datasets._files import (clip_index, layout_error, list_caption, read_id_list, read_label_png,
                                       read_rgb_frames, safe_clip_id, indexed_clip)
from vidinterp.datasets.records import ClipRecord, DatasetLayoutError

__all__ = ["Voc2012Source", "CLASSES", "CONCEPT_WORDS", "LAYOUT", "VOID"]

LAYOUT = ("the PASCAL VOC 2012 layout VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt, "
          "VOC2012/JPEGImages/<id>.jpg and VOC2012/SegmentationClass/<id>.png (palette PNG, 0 background, "
          "1-20 classes, 255 void)")

#: Official class names by id (0 = background).
CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

#: The concept word(s) of each class id 1..20.
CONCEPT_WORDS: dict[int, str] = {i: name for i, name in enumerate(CLASSES) if i} | {
    11: "dining table", 16: "potted plant", 20: "tv monitor"}

VOID = 255


def _voc2012_dir(root: Path) -> Path:
    """The ``VOC2012`` folder under any of the accepted roots."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DatasetLayoutError(f"{root}: no ImageSets/Segmentation under {root}, {root / 'VOC2012'} or "
                             f"{root / 'VOCdevkit' / 'VOC2012'}; expected {LAYOUT}")


class Voc2012Source:
    """A PASCAL VOC 2012 segmentation split on disk (see the module docstring).

    Args:
        path: the folder holding ``VOCdevkit``, the ``VOCdevkit`` folder or the ``VOC2012`` folder.
        split: ``"val"`` (default), ``"train"`` or ``"trainval"``.
    """

    name = "voc2012"

    def __init__(self, path: str | os.PathLike, split: str = "val"):
        self.root = Path(path)
        self.voc_dir = _voc2012_dir(self.root)
        ids = read_id_list(self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt", LAYOUT)
        self._index = clip_index(ids, (safe_clip_id(i) for i in ids),
                                 self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt")

    def clip_ids(self) -> list[str]:
        """The split's image ids (sanitised), sorted; reads no images."""
        return list(self._index)

    def load(self, clip_id: str) -> ClipRecord:
        """Read one image as a one-frame clip with one mask per class present."""
        image_id = indexed_clip(self._index, clip_id, self.name)
        frames = read_rgb_frames([self.voc_dir / "JPEGImages" / f"{image_id}.jpg"], LAYOUT, self.voc_dir)
        label_file = self.voc_dir / "SegmentationClass" / f"{image_id}.png"
        labels = read_label_png(label_file, LAYOUT, frames.shape[1:3])[None]
        ids = tuple(int(v) for v in np.unique(labels) if v not in (0, VOID))
        if any(i >= len(CLASSES) for i in ids):
            raise layout_error(label_file, f"has class ids {[i for i in ids if i >= len(CLASSES)]} outside 0-20 and 255",
                               LAYOUT)
        concepts = tuple(CONCEPT_WORDS[i] for i in ids)
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=frames,
            masks=labels[None] == np.asarray(ids, dtype=np.uint8).reshape(-1, 1, 1, 1),
            mask_ids=ids, mask_names=tuple(CLASSES[i] for i in ids), caption=list_caption(concepts),
            concepts=concepts, concept_masks={c: (i,) for c, i in zip(concepts, ids)}, ignore=labels == VOID,
            attrs={"image_id": image_id, "voc_dir": str(self.voc_dir)})
