"""Datasets: the synthetic shapes clips with exact ground truth, and readers of real dataset
layouts (MeViS, DAVIS-2017, VSPW, ImageNet-Segmentation, PASCAL VOC 2012, TAP-Vid) that give
:class:`~vidinterp.datasets.records.ClipRecord` s (docs/datasets.md)."""

from vidinterp.datasets.records import ClipRecord, ClipSource, DatasetLayoutError
from vidinterp.datasets.sources import DATASETS, open_dataset

__all__ = ["ClipRecord", "ClipSource", "DatasetLayoutError", "DATASETS", "open_dataset"]
