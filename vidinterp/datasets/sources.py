"""Open a dataset on disk by name: :func:`open_dataset` and the registry :data:`DATASETS`.

Reader modules are imported only when their dataset is opened, so a missing optional
dependency of one reader (e.g. h5py) never breaks the others.

Example::

    source = open_dataset("davis2017", "/data/DAVIS", split="val")
    for clip_id in source.clip_ids():
        record = source.load(clip_id)
"""

from __future__ import annotations

import importlib
import inspect
import os

from vidinterp.datasets.records import ClipSource

__all__ = ["DATASETS", "open_dataset"]

#: Dataset name -> ``"module:Class"`` of its reader; the class is called as ``Class(path, **options)``.
DATASETS: dict[str, str] = {
    "mevis": "vidinterp.datasets.mevis:MevisSource",
    "davis2017": "vidinterp.datasets.davis:Davis2017Source",
    "vspw": "vidinterp.datasets.vspw:VspwSource",
    "imagenet_seg": "vidinterp.datasets.imagenet_seg:ImagenetSegSource",
    "voc2012": "vidinterp.datasets.voc:Voc2012Source",
    "tapvid_davis": "vidinterp.datasets.tapvid:TapVidDavisSource",
    "tapvid_kinetics": "vidinterp.datasets.tapvid:TapVidKineticsSource",
    "shapes": "vidinterp.datasets.shapes_source:ShapesSource",
}


def open_dataset(name: str, path: str | os.PathLike, **options) -> ClipSource:
    """Open the dataset ``name`` stored at ``path`` (nothing is downloaded).

    Args:
        name: one of :data:`DATASETS`.
        path: the folder or file of the release, as each reader's docstring describes.
        **options: the reader's keyword arguments (e.g. ``split="val"``).

    Raises:
        ValueError: unknown ``name`` (the message lists the names) or an option the reader does
            not take (the message lists those it takes).
        DatasetLayoutError: ``path`` does not hold the reader's layout.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    module_name, class_name = DATASETS[name].split(":")
    reader = getattr(importlib.import_module(module_name), class_name)
    try:
        inspect.signature(reader).bind(path, **options)
    except TypeError as error:
        accepted = [p for p in inspect.signature(reader).parameters if p != "path"]
        raise ValueError(f"dataset {name!r} ({DATASETS[name]}) takes the options {accepted}; got "
                         f"{sorted(options)} ({error})") from error
    return reader(path, **options)
