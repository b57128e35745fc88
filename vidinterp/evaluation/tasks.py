"""Per benchmark: how a clip record is traced and scored.

A :class:`Task` takes one record, already fitted to the model's geometry
(:mod:`vidinterp.evaluation.fitting`), runs the model once and returns :class:`ClipScores`:
metric samples per method. A *map task* runs one :func:`vidinterp.trace` with every method's
analysis (:mod:`vidinterp.evaluation.methods`), prompted with the record's caption (for models
whose concepts must be prompt words, the concepts the caption lacks are appended), tracing the
record's concepts; each method's map is taken to the clip's pixels
(:func:`vidinterp.pixels.pixel_maps`: ``float [C, F, H, W]``) and scored against the record's
masks. The tracking tasks run :func:`vidinterp.track` once.

Benchmarks (:data:`TASKS`) and their metrics (all in ``[0, 1]``, higher is better):

* ``shapes``: :func:`vidinterp.datasets.scoring.score_maps` against the exact ground truth
  (``object_miou``, ``motion_iou``, ``temporal``, ``auroc_2obj`` and its split by word kind),
  the numbers of ``benchmarks/shapes.py``.
* ``mevis``: with a judge, ``mls``: the motion localisation score
  (:func:`vidinterp.evaluation.mls.motion_localisation_score`, the judge's average) of each
  motion word's map. Without a judge, mask-based stand-ins, labelled as such:
  ``mask_motion_iou`` (foreground IoU of the mean-thresholded map with the union of the masks
  the concept names, mean over frames where the mask is non-empty) and ``mask_pointing``
  (:func:`vidinterp.metrics.pointing_accuracy`), for every concept with masks.
* ``davis2017``, ``vspw`` (video semantic segmentation) and ``imagenet_seg``, ``voc2012``
  (image zero-shot segmentation): per concept with masks
  :func:`vidinterp.metrics.binary_segmentation_scores` (``miou``, ``accuracy``, and for images
  ``miou_parity``); multi-class (all but ``imagenet_seg``): ``multiclass_miou`` of the labels of
  :func:`vidinterp.metrics.argmax_segmentation` with background threshold
  :data:`BACKGROUND_THRESHOLD` (truth: the first concept mask covering a pixel, else
  background); ``vspw`` adds ``mvc_8``/``mvc_16`` (:func:`vidinterp.metrics.video_consistency`
  of those labels). ``ignore`` pixels are left out everywhere.
* ``tapvid_davis``, ``tapvid_kinetics``: methods ``track`` (:func:`vidinterp.track` from each
  track's first visible point) and ``zero_motion`` (the query point held still, a baseline);
  ``delta_avg`` (TAP-Vid, 256x256, query mode first) and ``pck_8px``
  (:mod:`vidinterp.tracking_metrics`).

A clip's score of a metric is the mean of its samples (NaN samples skipped); a metric with no
sample does not apply to the clip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidinterp.datasets.records import ClipRecord

__all__ = ["ClipScores", "Task", "MapTask", "ShapesTask", "MevisTask", "SegmentationTask", "TrackingTask",
           "TASKS", "get_task", "BACKGROUND_THRESHOLD", "DEFAULT_METHODS", "FRAME_METHODS", "compares_frames"]

#: Normalised map value under which a pixel is background in the multi-class segmentation.
BACKGROUND_THRESHOLD = 0.5
#: Map methods of an evaluation when none are named: the IMAP paper's Table 2 rows.
DEFAULT_METHODS = ("cross_attention", "concept_attention", "gramcol_all_layers", "gramcol+layer_sel",
                   "gramcol+head_sel", "imap")
#: Methods that select heads by how they separate frames: they need two latent frames (not images).
FRAME_METHODS = ("gramcol+head_sel", "imap")


def compares_frames(method: str) -> bool:
    """Whether ``method`` needs two latent frames: a :data:`FRAME_METHODS` row or any IMAP row
    (``imap(top<k>_chi)``, ``imap_all_layers(top<k>_chi)``, ``imap(random<k>)``), with or without
    ``+softmax``."""
    base = method.removesuffix("+softmax")
    return base in FRAME_METHODS or base.startswith("imap")


@dataclass
class ClipScores:
    """Scores of one clip.

    Attributes:
        samples: ``{method: {metric: [float, ...]}}``, the metric's samples (e.g. one per
            concept); NaN marks a sample that could not be computed.
        notes: ``{key: text}`` about how the numbers were made (e.g. which metrics are
            mask-based stand-ins).
        judgements: ``{method: [judge record, ...]}``, JSON-able records of a judge's verdicts
            (e.g. :meth:`vidinterp.evaluation.mls.MLSResult.to_dict`: scores and raw replies),
            stored with the scores.
    """

    samples: dict[str, dict[str, list[float]]]
    notes: dict[str, str] = field(default_factory=dict)
    judgements: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def scores(self) -> dict[str, dict[str, float]]:
        """``{method: {metric: mean of the finite samples}}``; metrics without one are left out."""
        out: dict[str, dict[str, float]] = {}
        for method, metrics in self.samples.items():
            out[method] = {}
            for metric, values in metrics.items():
                finite = [value for value in values if np.isfinite(value)]
                if finite:
                    out[method][metric] = float(np.mean(finite))
        return out


class Task(ABC):
    """How one benchmark's records are run and scored."""

    #: the benchmark's name (a key of :data:`TASKS`)
    name: str = ""
    #: metric names in table order
    metrics: tuple[str, ...] = ()

    def methods(self, requested: Sequence[str] | None) -> list[str]:
        """The methods to run: ``requested`` checked, or the task's defaults."""
        from vidinterp.evaluation.methods import check_methods

        return check_methods(list(requested) if requested else list(DEFAULT_METHODS))

    @abstractmethod
    def run(self, pipe: Any, record: ClipRecord, methods: Sequence[str], *, judge: Any = None,
            trace_options: dict[str, Any] | None = None) -> ClipScores:
        """Run the model once on ``record`` (fitted to its geometry) and score every method."""


class MapTask(Task):
    """A task scoring concept maps: one trace with every method's analysis, then
    :meth:`score` per method on pixel maps."""

    def prompt(self, adapter, record: ClipRecord) -> str:
        """The caption; for a model whose concepts must be prompt words, with the concepts it
        lacks appended."""
        from vidinterp.prompt_words import concept_span

        if adapter.has_concept_stream:
            return record.caption
        missing = [concept for concept in record.concepts if concept_span(record.caption, concept) is None]
        return " ".join([record.caption, *missing]).strip()

    def run(self, pipe: Any, record: ClipRecord, methods: Sequence[str], *, judge: Any = None,
            trace_options: dict[str, Any] | None = None) -> ClipScores:
        import vidinterp
        from vidinterp.evaluation.methods import method_analyses
        from vidinterp.registry import adapter_for

        if not record.concepts:
            raise ValueError(f"{record.clip_id}: the record has no concepts to trace")
        trace = vidinterp.trace(pipe, video=record.frames, prompt=self.prompt(adapter_for(pipe), record),
                                concepts=list(record.concepts), analyses=method_analyses(list(methods)),
                                resample=False, **(trace_options or {}))
        return self.score_trace(record, trace, methods, judge=judge)

    def score_trace(self, record: ClipRecord, trace, methods: Sequence[str], *, judge: Any = None) -> ClipScores:
        """:class:`ClipScores` of the maps ``methods`` name in ``trace.maps``."""
        from vidinterp.pixels import pixel_maps

        samples = {}
        for method in methods:
            maps = pixel_maps(trace.maps[method], record.num_frames).values  # [C, F, H, W]
            samples[method] = self.score(record, list(record.concepts), maps, judge=judge)
        return ClipScores(samples, self.notes(judge))

    def notes(self, judge: Any) -> dict[str, str]:
        """Notes stored with every clip's scores."""
        return {}

    @abstractmethod
    def score(self, record: ClipRecord, concepts: list[str], maps: np.ndarray, *, judge: Any = None) -> dict[str, list[float]]:
        """Metric samples of one method's ``float [C, F, H, W]`` maps of ``record``."""


class ShapesTask(MapTask):
    """The shapes benchmark (exact ground truth; :mod:`vidinterp.datasets.scoring`)."""

    name = "shapes"

    def __init__(self) -> None:
        from vidinterp.datasets.scoring import ALL_METRICS

        self.metrics = ALL_METRICS

    def score(self, record: ClipRecord, concepts: list[str], maps: np.ndarray, *, judge: Any = None) -> dict[str, list[float]]:
        """:func:`~vidinterp.datasets.scoring.score_maps` of ``maps`` (``[C, F, h, w]``, any grid
        tiling the frames) against the record's rebuilt ground truth."""
        from vidinterp.datasets.scoring import score_maps
        from vidinterp.datasets.shapes_source import ground_truth

        return score_maps(ground_truth(record), concepts, maps)


class MevisTask(MapTask):
    """MeViS referring motion expressions: MLS with a judge, mask-based stand-ins without."""

    name = "mevis"
    metrics = ("mls", "mask_motion_iou", "mask_pointing")

    def notes(self, judge: Any) -> dict[str, str]:
        if judge is None:
            return {"metrics": "no judge configured: mask_motion_iou and mask_pointing are mask-based stand-ins "
                               "for MLS, scored against the masks each concept names"}
        return {"metrics": f"mls from the judge {type(judge).__name__}"}

    def score_trace(self, record: ClipRecord, trace, methods: Sequence[str], *, judge: Any = None) -> ClipScores:
        """Without a judge, :meth:`score` on pixel maps; with one, the MLS of each motion word's
        map (every concept when the expression has no motion word). The judge sees the maps at
        the token grid, one per pixel frame (the latent frame it belongs to), so the MLS
        rendering's own bilinear resize makes the overlays, as in the IMAP paper's evaluation;
        every verdict (criteria, 1-5 scores, raw replies) is kept in ``judgements``."""
        if judge is None:
            return super().score_trace(record, trace, methods)
        from vidinterp.evaluation.mls import motion_localisation_score
        from vidinterp.pixels import pixel_frame_index

        concepts = list(record.concepts)
        words = [word for word in concepts if word in record.motion_words] or concepts
        samples, judgements = {}, {}
        for method in methods:
            maps = trace.maps[method]
            per_pixel_frame = np.asarray(maps.values)[:, pixel_frame_index(maps, record.num_frames)]  # [C, F, h, w]
            verdicts = [motion_localisation_score(record.frames, per_pixel_frame[concepts.index(word)],
                                                  caption=record.caption, concept=word, judge=judge) for word in words]
            samples[method] = {"mls": [float(verdict.average) for verdict in verdicts]}
            judgements[method] = [verdict.to_dict() for verdict in verdicts]
        return ClipScores(samples, self.notes(judge), judgements)

    def score(self, record: ClipRecord, concepts: list[str], maps: np.ndarray, *, judge: Any = None) -> dict[str, list[float]]:
        """The mask-based stand-ins for MLS (no judge): motion IoU and pointing accuracy of each
        concept with ground-truth masks."""
        from vidinterp.metrics import binarize_at_mean, iou, pointing_accuracy

        out: dict[str, list[float]] = {"mask_motion_iou": [], "mask_pointing": []}
        for index, word in enumerate(concepts):
            if word not in record.concept_masks:
                continue
            mask = record.concept_mask(word)
            frames = [f for f in range(record.num_frames) if mask[f].any()]
            if frames:
                out["mask_motion_iou"].append(float(np.mean([iou(binarize_at_mean(maps[index, f]), mask[f])
                                                             for f in frames])))
            out["mask_pointing"].append(pointing_accuracy(maps[index], mask))
        return out


class SegmentationTask(MapTask):
    """Zero-shot semantic segmentation of videos or images (binary per concept, multi-class,
    and for VSPW video consistency)."""

    def __init__(self, name: str, *, images: bool, multiclass: bool, consistency: tuple[int, ...] = ()) -> None:
        self.name, self.images, self.multiclass, self.consistency = name, images, multiclass, consistency
        self.metrics = (("miou", "accuracy") + (("miou_parity",) if images else ())
                        + (("multiclass_miou",) if multiclass else ()) + tuple(f"mvc_{n}" for n in consistency))

    def methods(self, requested: Sequence[str] | None) -> list[str]:
        """As :meth:`Task.methods`; for images (one latent frame) without the methods that rank
        heads by how they separate frames (:data:`FRAME_METHODS`): left out of the defaults and
        refused when asked for, before any clip runs."""
        if not self.images:
            return super().methods(requested)
        if requested:
            needing_frames = [method for method in requested if compares_frames(method)]
            if needing_frames:
                raise ValueError(f"{needing_frames} rank heads by how they separate frames, and {self.name} clips are "
                                 f"images (one latent frame); choose among the others, e.g. "
                                 f"{[m for m in DEFAULT_METHODS if m not in FRAME_METHODS]}")
            return super().methods(requested)
        return super().methods([method for method in DEFAULT_METHODS if method not in FRAME_METHODS])

    def score(self, record: ClipRecord, concepts: list[str], maps: np.ndarray, *, judge: Any = None) -> dict[str, list[float]]:
        from vidinterp.metrics import argmax_segmentation, binary_segmentation_scores, confusion_matrix, \
            multiclass_miou, video_consistency

        out: dict[str, list[float]] = {metric: [] for metric in self.metrics}
        named = [index for index, word in enumerate(concepts) if word in record.concept_masks]
        for index in named:
            binary = binary_segmentation_scores(maps[index], record.concept_mask(concepts[index]), record.ignore)
            for metric in ("miou", "accuracy") + (("miou_parity",) if self.images else ()):
                out[metric].append(binary[metric])
        if named and (self.multiclass or self.consistency):
            truth = np.zeros(record.frames.shape[:3], dtype=np.int64)
            for label, index in reversed(list(enumerate(named, start=1))):  # the first mask wins overlaps
                truth[record.concept_mask(concepts[index])] = label
            prediction = argmax_segmentation(maps[named], background=BACKGROUND_THRESHOLD) + 1
            if self.multiclass:
                confusion = confusion_matrix(prediction, truth, len(named) + 1, record.ignore)
                out["multiclass_miou"].append(multiclass_miou(confusion)[0])
            for window in self.consistency:
                if record.num_frames >= 2:
                    out[f"mvc_{window}"].append(video_consistency(prediction, truth, window, record.ignore))
        return out


class TrackingTask(Task):
    """TAP-Vid point tracking with :func:`vidinterp.track`."""

    TRACKERS = ("track", "zero_motion")
    metrics = ("delta_avg", "pck_8px")

    def __init__(self, name: str) -> None:
        self.name = name

    def methods(self, requested: Sequence[str] | None) -> list[str]:
        methods = list(requested) if requested else list(self.TRACKERS)
        unknown = [method for method in methods if method not in self.TRACKERS]
        if unknown or len(set(methods)) != len(methods):
            raise ValueError(f"{self.name} takes the trackers {list(self.TRACKERS)} as methods, got {methods}")
        return methods

    def run(self, pipe: Any, record: ClipRecord, methods: Sequence[str], *, judge: Any = None,
            trace_options: dict[str, Any] | None = None) -> ClipScores:
        import vidinterp
        from vidinterp.tracking_metrics import evaluation_mask, pck, tapvid_metrics

        if record.tracks is None:
            raise ValueError(f"{record.clip_id}: a {self.name} record needs tracks [points, F, 2]")
        visible = (np.ones(record.tracks.shape[:2], dtype=bool) if record.visible is None
                   else np.asarray(record.visible, dtype=bool))
        keep = visible.any(axis=1)
        truth, visible = np.asarray(record.tracks, dtype=np.float64)[keep], visible[keep]
        if not len(truth):
            raise ValueError(f"{record.clip_id}: no track is visible in any frame of the fitted clip")
        queries = visible.argmax(axis=1)
        points = truth[np.arange(len(truth)), queries]
        size = record.frames.shape[1:3]
        points = np.clip(points, 0, np.array([size[1], size[0]]) - 1e-3)
        predicted: dict[str, np.ndarray] = {}
        if "track" in methods:
            options = dict(trace_options or {})
            predicted["track"] = vidinterp.track(pipe, video=record.frames, points=points, query_frames=queries,
                                                 prompt=record.caption or None, **options)["tracks"].values
        if "zero_motion" in methods:
            predicted["zero_motion"] = np.repeat(points[:, None], record.num_frames, axis=1)
        occluded = ~visible
        after = evaluation_mask(queries, record.num_frames)
        samples = {method: {"delta_avg": [tapvid_metrics(tracks, truth, occluded, queries, size)["delta_avg"]],
                            "pck_8px": [pck(tracks, truth, occluded, evaluate=after)]}
                   for method, tracks in predicted.items()}
        return ClipScores({method: samples[method] for method in methods})


#: Every benchmark's task, by name.
TASKS: dict[str, Task] = {
    "shapes": ShapesTask(),
    "mevis": MevisTask(),
    "davis2017": SegmentationTask("davis2017", images=False, multiclass=True),
    "vspw": SegmentationTask("vspw", images=False, multiclass=True, consistency=(8, 16)),
    "imagenet_seg": SegmentationTask("imagenet_seg", images=True, multiclass=False),
    "voc2012": SegmentationTask("voc2012", images=True, multiclass=True),
    "tapvid_davis": TrackingTask("tapvid_davis"),
    "tapvid_kinetics": TrackingTask("tapvid_kinetics"),
}


def get_task(benchmark: str) -> Task:
    """The task of ``benchmark``; ``ValueError`` naming the known benchmarks otherwise."""
    if benchmark not in TASKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {sorted(TASKS)}")
    return TASKS[benchmark]
