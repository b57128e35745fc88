"""VSPW (video scene parsing in the wild) reader: one clip per video, one mask per class.

Layout read (``root`` is the ``VSPW`` / ``VSPW_480p`` folder of the release)::

    <root>/{train,val,test}.txt              one video name per line
    <root>/label_num_dic_final.json          {class name: class id}, ids 0..124
    <root>/data/<video>/origin/<frame>.jpg   frames, in name order
    <root>/data/<video>/mask/<frame>.png     class id per pixel (palette or greyscale PNG)

Label convention (the release's README): mask values are 0..124 and 255; ``0`` is ``"others"``
and ``255`` is the void label, and the official evaluation treats *both* as void. This reader does
the same: pixels of 0 or 255 go to ``ignore`` and get no mask.

Records: ``clip_id`` is the video name; one mask per class id in 1..124 present in the read frames
(ascending ids; ``mask_names`` are the class names as in the JSON, e.g. ``"traffic_light"``);
``concepts`` are those names as words (``"traffic light"``), each mapped to its class;
``caption`` lists them (``"person, road and sky"``; ``"a scene"`` when none); no motion words.
``stride`` keeps every ``stride``-th frame and ``max_frames`` the first that many of those.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidinterp.datasets._files import (clip_index, layout_error, list_caption, read_id_list, read_json,
                                       read_label_png, read_rgb_frames, safe_clip_id, indexed_clip, words_of_name)
from vidinterp.datasets.records import ClipRecord

__all__ = ["VspwSource", "LAYOUT", "OTHERS", "VOID"]

LAYOUT = ("the VSPW layout <root>/<split>.txt, <root>/label_num_dic_final.json, "
          "<root>/data/<video>/origin/<frame>.jpg and <root>/data/<video>/mask/<frame>.png (class ids, 0 others, 255 void)")

OTHERS = 0
VOID = 255


class VspwSource:
    """A VSPW split on disk (see the module docstring for the layout and record rules).

    Args:
        path: the VSPW folder.
        split: ``"val"`` (default), ``"train"`` or ``"test"`` (the test split has no masks).
        stride: keep every ``stride``-th frame (>= 1).
        max_frames: keep at most this many frames (after the stride), or ``None`` for all.
    """

    name = "vspw"

    def __init__(self, path: str | os.PathLike, split: str = "val", stride: int = 1, max_frames: int | None = None):
        if int(stride) != stride or stride < 1:
            raise ValueError(f"vspw: stride must be an integer >= 1; got {stride!r}")
        if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
            raise ValueError(f"vspw: max_frames must be an integer >= 1 or None; got {max_frames!r}")
        self.root = Path(path)
        self.stride, self.max_frames = int(stride), max_frames
        videos = read_id_list(self.root / f"{split}.txt", LAYOUT)
        self._index = clip_index(videos, (safe_clip_id(v) for v in videos), self.root / f"{split}.txt")
        classes = read_json(self.root / "label_num_dic_final.json", LAYOUT)
        try:
            self.class_names: dict[int, str] = {int(v): str(k) for k, v in classes.items()}
        except (AttributeError, TypeError, ValueError) as error:
            raise layout_error(self.root / "label_num_dic_final.json", f"must map class names to integer ids ({error})",
                               LAYOUT) from error

    def clip_ids(self) -> list[str]:
        """The split's video names (sanitised), sorted; reads no frames."""
        return list(self._index)

    def load(self, clip_id: str) -> ClipRecord:
        """Read one video's kept frames with one mask per class present; see the module docstring."""
        video = indexed_clip(self._index, clip_id, self.name)
        origin = self.root / "data" / video / "origin"
        if not origin.is_dir():
            raise layout_error(origin, "frame folder not found", LAYOUT)
        frame_files = sorted(p for p in origin.iterdir() if p.suffix.lower() == ".jpg")[::self.stride]
        frame_files = frame_files[:self.max_frames]
        frames = read_rgb_frames(frame_files, LAYOUT, origin)
        mask_files = [self.root / "data" / video / "mask" / f"{p.stem}.png" for p in frame_files]
        labels = np.stack([read_label_png(m, LAYOUT, frames.shape[1:3]) for m in mask_files])
        ids = tuple(int(v) for v in np.unique(labels) if v not in (OTHERS, VOID))
        unknown = [i for i in ids if i not in self.class_names]
        if unknown:
            first = next(m for m, lab in zip(mask_files, labels) if np.isin(lab, unknown).any())
            raise layout_error(first, f"class ids {unknown} are not in label_num_dic_final.json", LAYOUT)
        names = tuple(self.class_names[i] for i in ids)
        concepts = tuple(words_of_name(n) for n in names)
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=frames,
            masks=labels[None] == np.asarray(ids, dtype=np.uint8).reshape(-1, 1, 1, 1),
            mask_ids=ids, mask_names=names, caption=list_caption(concepts), concepts=concepts,
            concept_masks={c: (i,) for c, i in zip(concepts, ids)},
            ignore=(labels == OTHERS) | (labels == VOID),
            attrs={"video": video, "frames": [p.name for p in frame_files], "stride": self.stride})
