"""DAVIS-2017 (semi-supervised video object segmentation) reader: one clip per video.

Layout read (``root`` is the ``DAVIS`` folder of the release)::

    <root>/ImageSets/2017/<split>.txt          one video name per line
    <root>/JPEGImages/480p/<video>/00000.jpg   frames, in name order
    <root>/Annotations/480p/<video>/00000.png  palette PNG per frame (same stem as the frame):
                                               pixel value = object id, 0 background, 255 void

Every frame needs its annotation (the ``test-dev``/``test-challenge`` splits annotate only the
first frame and are not readable here). ``resolution="Full-Resolution"`` reads the full-size
folders instead of ``480p``.

Records: ``clip_id`` is the video name; one mask per object id present in any frame
(``mask_ids`` = object ids, ascending); ``ignore`` = the void (255) pixels.

* With ``semantics`` (a JSON file ``{video: {"<object id>": category}}``, e.g. the
  ``davis_semantics.json`` distributed with DAVIS-2017): ``mask_names`` are the categories,
  ``concepts`` the distinct categories in object-id order, each mapped to the objects of that
  category; ``caption`` lists them (``"person and bicycle"``); no motion words.
* Without: ``mask_names`` are empty, ``concepts`` are the words of the video name
  (``"bike-packing"`` -> ``bike``, ``packing``), each mapped to *all* objects (the clip's
  annotated foreground, a coarse ground truth); ``caption`` is the name as words
  (``"bike packing"``); ``motion_words`` are the concepts that
  :func:`vidinterp.datasets.mevis.motion_words` counts as motion words (``packing``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidinterp.datasets._files import (clip_index, layout_error, list_caption, read_id_list, read_json,
                                       read_label_png, read_rgb_frames, safe_clip_id, indexed_clip, words_of_name)
from vidinterp.datasets.mevis import motion_words
from vidinterp.datasets.records import ClipRecord

__all__ = ["Davis2017Source", "LAYOUT"]

LAYOUT = ("the DAVIS-2017 layout <root>/ImageSets/2017/<split>.txt, <root>/JPEGImages/<resolution>/<video>/<frame>.jpg "
          "and <root>/Annotations/<resolution>/<video>/<frame>.png (palette PNG of object ids, 0 background, 255 void)")

VOID = 255


class Davis2017Source:
    """A DAVIS-2017 split on disk (see the module docstring for the layout and record rules).

    Args:
        path: the ``DAVIS`` folder.
        split: ``"val"`` (default), ``"train"``, ... (the name of a list in ``ImageSets/2017``).
        resolution: the frame folder under ``JPEGImages`` and ``Annotations`` (``"480p"``).
        semantics: a JSON file mapping video -> {object id: category}, or ``None``.
    """

    name = "davis2017"

    def __init__(self, path: str | os.PathLike, split: str = "val", resolution: str = "480p",
                 semantics: str | os.PathLike | None = None):
        self.root = Path(path)
        self.resolution = resolution
        videos = read_id_list(self.root / "ImageSets" / "2017" / f"{split}.txt", LAYOUT)
        self._index = clip_index(videos, (safe_clip_id(v) for v in videos),
                                 self.root / "ImageSets" / "2017" / f"{split}.txt")
        self._semantics_path = None if semantics is None else Path(semantics)
        self._semantics = None if semantics is None else self._read_semantics(Path(semantics))

    @staticmethod
    def _read_semantics(path: Path) -> dict[str, dict[int, str]]:
        expected = "a JSON object {video: {\"<object id>\": category}}"
        raw = read_json(path, expected)
        try:
            return {str(video): {int(k): str(v) for k, v in objects.items()} for video, objects in raw.items()}
        except (AttributeError, TypeError, ValueError) as error:
            raise layout_error(path, f"malformed semantics ({error})", expected) from error

    def clip_ids(self) -> list[str]:
        """The split's video names (sanitised), sorted; reads no frames."""
        return list(self._index)

    def load(self, clip_id: str) -> ClipRecord:
        """Read one video with its per-object masks; see the module docstring."""
        video = indexed_clip(self._index, clip_id, self.name)
        frame_dir = self.root / "JPEGImages" / self.resolution / video
        if not frame_dir.is_dir():
            raise layout_error(frame_dir, "frame folder not found", LAYOUT)
        frame_files = sorted(p for p in frame_dir.iterdir() if p.suffix.lower() == ".jpg")
        frames = read_rgb_frames(frame_files, LAYOUT, frame_dir)
        labels = np.stack([read_label_png(self.root / "Annotations" / self.resolution / video / f"{p.stem}.png",
                                          LAYOUT, frames.shape[1:3]) for p in frame_files])
        ids = tuple(int(v) for v in np.unique(labels) if v not in (0, VOID))
        masks = labels[None] == np.asarray(ids, dtype=np.uint8).reshape(-1, 1, 1, 1)
        if self._semantics is not None:
            categories = self._semantics.get(video, {})
            missing = [i for i in ids if i not in categories]
            if missing:
                raise layout_error(self._semantics_path, f"video {video!r} has no category for object ids {missing}",
                                   "a JSON object {video: {\"<object id>\": category}} covering every annotated object")
            names = tuple(categories[i] for i in ids)
            concepts = tuple(dict.fromkeys(names))
            concept_masks = {c: tuple(i for i, n in zip(ids, names) if n == c) for c in concepts}
            caption, motions = list_caption(concepts), ()
        else:
            names = ("",) * len(ids)
            caption = words_of_name(video)
            concepts = tuple(dict.fromkeys(caption.split()))
            concept_masks = {c: ids for c in concepts}
            motions = tuple(w for w in concepts if w in motion_words(caption))
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=frames, masks=masks, mask_ids=ids, mask_names=names,
            caption=caption, concepts=concepts, concept_masks=concept_masks, motion_words=motions,
            ignore=labels == VOID,
            attrs={"video": video, "frames": [p.name for p in frame_files], "resolution": self.resolution})
