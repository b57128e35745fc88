"""ImageNet-Segmentation (Guillaumin et al., IJCV 2014) reader: one one-frame clip per image.

Layout read: the single MATLAB v7.3 file ``gtsegs_ijcv.mat`` (an HDF5 file, read with h5py)::

    /value/img  object references [N, 1]; each -> uint8 [3, W, H] (an RGB image, MATLAB's
                column-major order, so transposed to [H, W, 3]); a greyscale image is [W, H]
    /value/gt   object references [N, 1]; each -> a [1, 1] cell of references -> uint8 [W, H],
                the foreground mask (non-zero = foreground)
    /value/id   object references [N, 1]; each -> uint16 characters (MATLAB char), the image id
                ``<wnid>_<number>`` (e.g. ``n02085620_1205``); optional

Records: ``clip_id`` is the zero-padded index (``00000``, ``00001``, ...); one mask, id 1, the
foreground. The concept is the image's class name when the file has ``/value/id`` and
``class_names`` maps its WordNet id (``wnid``) to a name; otherwise the ``concept`` argument
(default ``"object"``). ``caption`` is the concept; ``mask_names`` holds the class name, or
``""`` when it is unknown; no motion words, no ignore mask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vidinterp.datasets._files import layout_error, unknown_clip
from vidinterp.datasets.records import ClipRecord

__all__ = ["ImagenetSegSource", "LAYOUT"]

LAYOUT = ("the ImageNet-Segmentation file gtsegs_ijcv.mat (MATLAB v7.3/HDF5) with /value/img and /value/gt "
          "object references [N, 1] (images uint8 [3, W, H], masks in [1, 1] cells of uint8 [W, H]) and optional "
          "/value/id")


class ImagenetSegSource:
    """``gtsegs_ijcv.mat`` on disk (see the module docstring for the layout and record rules).

    Args:
        path: the ``.mat`` file.
        class_names: WordNet id -> class name (``{"n02085620": "chihuahua"}``), as a mapping or a
            JSON file, or ``None``.
        concept: the concept (and caption) of images whose class name is unknown.
    """

    name = "imagenet_seg"

    def __init__(self, path: str | os.PathLike, class_names: Mapping[str, str] | str | os.PathLike | None = None,
                 concept: str = "object"):
        import h5py

        self.root = Path(path)
        if not self.root.is_file():
            raise layout_error(self.root, "file not found", LAYOUT)
        try:
            with h5py.File(self.root, "r") as file:
                count = len(file["/value/img"])
                if len(file["/value/gt"]) != count:
                    raise layout_error(self.root, f"/value/gt has {len(file['/value/gt'])} entries but /value/img has "
                                       f"{count}", LAYOUT)
                self._has_ids = "/value/id" in file
        except (OSError, KeyError) as error:
            raise layout_error(self.root, f"cannot read /value/img and /value/gt ({error})", LAYOUT) from error
        self.concept = concept
        self.class_names = self._read_class_names(class_names)
        width = max(5, len(str(count - 1)))
        self._ids = [f"{i:0{width}d}" for i in range(count)]

    @staticmethod
    def _read_class_names(class_names: Mapping[str, str] | str | os.PathLike | None) -> dict[str, str]:
        if class_names is None:
            return {}
        if isinstance(class_names, Mapping):
            return {str(k): str(v) for k, v in class_names.items()}
        path = Path(class_names)
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in names.items()}
        except (OSError, ValueError, AttributeError) as error:
            raise layout_error(path, f"cannot read class names ({error})", "a JSON object {wnid: class name}") from error

    def clip_ids(self) -> list[str]:
        """``00000`` .. ``N-1``, zero-padded; reads no images."""
        return list(self._ids)

    def load(self, clip_id: str) -> ClipRecord:
        """Read one image and its foreground mask as a one-frame clip."""
        import h5py

        if clip_id not in self._ids:
            raise unknown_clip(clip_id, self.name, self._ids)
        index = int(clip_id)
        try:
            with h5py.File(self.root, "r") as file:
                image = np.asarray(file[file["/value/img"][index, 0]])
                mask = np.asarray(file[file[file["/value/gt"][index, 0]][0, 0]])
                image_id = "".join(map(chr, np.asarray(file[file["/value/id"][index, 0]]).ravel())) \
                    if self._has_ids else ""
        except (OSError, KeyError, ValueError, TypeError, IndexError) as error:
            raise layout_error(self.root, f"entry {index}: cannot dereference its image, mask or id ({error})",
                               LAYOUT) from error
        if image.ndim == 2:
            image = np.repeat(image[None], 3, axis=0)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise layout_error(self.root, f"entry {index}: image is {image.dtype} {list(image.shape)}, not uint8 "
                               "[3, W, H]", LAYOUT)
        frame = image.transpose(2, 1, 0)
        if mask.shape != image.shape[1:]:
            raise layout_error(self.root, f"entry {index}: mask is {list(mask.shape)} but the image is "
                               f"[W, H] = {list(image.shape[1:])}", LAYOUT)
        class_name = self.class_names.get(image_id.split("_")[0], "")
        concept = class_name or self.concept
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=np.ascontiguousarray(frame)[None],
            masks=(mask.T != 0)[None, None], mask_ids=(1,), mask_names=(class_name,), caption=concept,
            concepts=(concept,), concept_masks={concept: (1,)},
            attrs={"index": index, "image_id": image_id, "file": str(self.root)})
