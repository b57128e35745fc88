"""Tiny on-disk fixtures in the exact layouts the dataset readers read, with known answers.

:func:`write_fixture` writes one dataset's layout (2-3 clips of a few 32x48-pixel frames,
deterministic from ``seed``) under ``root`` and returns the path to pass to
``vidinterp.datasets.sources.open_dataset(name, path)``; :func:`fixture_truth` gives the
:class:`~vidinterp.datasets.records.ClipRecord` s the reader must produce with its default
options (``attrs`` left empty). Frames are flat-coloured rectangles aligned to the 8x8 JPEG
blocks and saved at quality 100 without chroma subsampling, so a decoded JPEG frame is within
:data:`JPEG_TOLERANCE` of the truth; label PNGs, RLE masks and raw arrays are exact.

``write_fixture(name, root, corrupt_clip=True)`` also damages one clip (:data:`CORRUPT_CLIPS`):
a frame file truncated to 16 bytes, a JPEG string cut short, or (HDF5 / raw-array layouts) a
frame array of the wrong shape, so ``load`` of that clip alone raises ``DatasetLayoutError``.

Captions, concepts and motion words of the truth are written out literally here, as a person
reading each reader's rules would predict them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidinterp.datasets.records import ClipRecord

__all__ = ["FIXTURES", "CORRUPT_CLIPS", "JPEG_TOLERANCE", "HEIGHT", "WIDTH", "write_fixture", "fixture_truth",
           "encode_coco_rle", "write_mevis", "write_davis", "write_vspw", "write_voc", "write_imagenet_seg",
           "write_tapvid_davis", "write_tapvid_kinetics"]

HEIGHT, WIDTH, BLOCK = 32, 48, 8
JPEG_TOLERANCE = 2
"""Largest difference (0..255) between a fixture frame and its decoded JPEG file."""

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 80, 230), "yellow": (240, 220, 30),
          "white": (245, 245, 245), "purple": (150, 60, 200), "sky": (120, 180, 250)}
BACKGROUND = (90, 90, 90)

#: The clip each ``corrupt_clip=True`` fixture damages.
CORRUPT_CLIPS: dict[str, str] = {
    "mevis": "dog_jump__0", "davis2017": "dog", "vspw": "video_b", "voc2012": "2007_000033",
    "imagenet_seg": "00001", "tapvid_davis": "car-turn", "tapvid_kinetics": "0001_of_0002__0000",
}

# A box: (colour, (height, width) in blocks, (dy, dx) in blocks per frame, frames it is drawn in or None for all).
Box = tuple[str, tuple[int, int], tuple[int, int], Sequence[int] | None]


def _paint(rng: np.random.Generator, num_frames: int, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``uint8 [F, H, W, 3]`` and labels ``uint8 [F, H, W]`` (``k + 1`` where box ``k`` is
    visible, later boxes on top, 0 elsewhere) of block-aligned boxes moving in a straight line
    that stays inside the frame; start positions drawn from ``rng``."""
    frames = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    frames[:] = BACKGROUND
    labels = np.zeros((num_frames, HEIGHT, WIDTH), np.uint8)
    grid = (HEIGHT // BLOCK, WIDTH // BLOCK)
    for k, (color, size, step, present) in enumerate(boxes):
        start = []
        for axis in range(2):
            travel = step[axis] * (num_frames - 1)
            low, high = max(0, -travel), grid[axis] - size[axis] - max(0, travel)
            start.append(int(rng.integers(low, high + 1)))
        for t in range(num_frames):
            if present is not None and t not in present:
                continue
            r, c = ((start[a] + step[a] * t) * BLOCK for a in range(2))
            rows, cols = slice(r, r + size[0] * BLOCK), slice(c, c + size[1] * BLOCK)
            frames[t, rows, cols] = COLORS[color]
            labels[t, rows, cols] = k + 1
    return frames, labels


def _masks(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``bool [len(values), F, H, W]``: where ``labels`` equals each value."""
    return np.stack([labels == v for v in values]) if values else np.zeros((0, *labels.shape), bool)


def _jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


def _png(path: Path, labels: np.ndarray, palette: bool) -> None:
    from PIL import Image

    image = Image.fromarray(labels)
    if palette:
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_jpegs(folder: Path, frames: np.ndarray, names: Sequence[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        (folder / f"{name}.jpg").write_bytes(_jpeg(frame))


def _truncate(path: Path) -> None:
    """Damage a file: keep only its first 16 bytes."""
    path.write_bytes(path.read_bytes()[:16])


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of ``bool [h, w]``: ``{"size": [h, w], "counts": str}``.

    Written pixel by pixel (column-major runs, then 5-bit chunks with continuation bit 0x20 and
    sign bit 0x10, offset by 48, runs from the third on stored as differences to the run two
    back), independently of the reader's decoder, so fixtures test it.
    """
    height, width = mask.shape
    runs, current, length = [], False, 0
    for column in range(width):
        for row in range(height):
            if bool(mask[row, column]) == current:
                length += 1
            else:
                runs.append(length)
                current, length = not current, 1
    runs.append(length)
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        while True:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr(48 + (chunk | (0x20 if more else 0))))
            if not more:
                break
    return {"size": [height, width], "counts": "".join(chars)}


# ----------------------------------------------------------------------------- MeViS
_MEVIS = {
    "cat_run": {"frames": 4, "boxes": [("red", (1, 2), (0, 1), None), ("blue", (1, 1), (0, 0), (0, 1, 2))],
                "obj_ids": [0, 1], "anno_ids": ["100", "101"],
                "expressions": {"0": ("red cat running to the right", [0], ("running",)),
                                "1": ("two cats", [0, 1], ())}},
    "dog_jump": {"frames": 3, "boxes": [("green", (2, 1), (1, 0), None)], "obj_ids": [0], "anno_ids": ["200"],
                 "expressions": {"0": ("dog jumps over and turns around", [0], ("jumps", "turns"))}},
}


def _build_mevis(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records, scenes = {}, {}
    for video, spec in _MEVIS.items():
        frames, labels = _paint(rng, spec["frames"], spec["boxes"])
        scenes[video] = (frames, labels)
        for exp_id, (text, objects, motions) in spec["expressions"].items():
            masks = _masks(labels, [spec["obj_ids"].index(o) + 1 for o in objects])
            concepts = motions or (text,)
            clip_id = f"{video}__{exp_id}"
            records[clip_id] = ClipRecord("mevis", clip_id, frames, masks, tuple(objects), ("",) * len(objects), text,
                                          concepts, {c: tuple(objects) for c in concepts}, motions)
    return records, scenes


def write_mevis(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/mevis/valid_u/{JPEGImages, meta_expressions.json, mask_dict.json}``; returns ``<root>/mevis``."""
    out = Path(root) / "mevis"
    split = out / "valid_u"
    _, scenes = _build_mevis(seed)
    meta, mask_dict = {"videos": {}}, {}
    for video, spec in _MEVIS.items():
        frames, labels = scenes[video]
        names = [f"{t:05d}" for t in range(len(frames))]
        _write_jpegs(split / "JPEGImages" / video, frames, names)
        meta["videos"][video] = {"frames": names, "expressions": {
            exp_id: {"exp": text, "obj_id": objects, "anno_id": [spec["anno_ids"][spec["obj_ids"].index(o)] for o in objects]}
            for exp_id, (text, objects, _) in spec["expressions"].items()}}
        for k, anno_id in enumerate(spec["anno_ids"]):
            mask_dict[anno_id] = [encode_coco_rle(lab == k + 1) if (lab == k + 1).any() else None for lab in labels]
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    if corrupt_clip:
        _truncate(split / "JPEGImages" / "dog_jump" / "00001.jpg")
    return out


# ----------------------------------------------------------------------------- DAVIS-2017
# video: frames, boxes (object id = box index + 1), whether a void block is drawn, caption,
# concepts (without semantics), motion words, semantics categories by object id.
_DAVIS = {
    "bike-packing": (3, [("red", (2, 1), (0, 1), None), ("blue", (1, 2), (0, -1), None)], True, "bike packing",
                     ("bike", "packing"), ("packing",), {1: "person", 2: "bicycle"}),
    "dog": (2, [("yellow", (1, 1), (1, 0), None)], False, "dog", ("dog",), (), {1: "dog"}),
}


def _void_block(labels: np.ndarray) -> None:
    """Mark the top-left 4x6 pixels void (255) in every frame."""
    labels[:, :4, :6] = 255


def _build_davis(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records, scenes = {}, {}
    for video, (num_frames, boxes, void, caption, concepts, motions, _) in _DAVIS.items():
        frames, labels = _paint(rng, num_frames, boxes)
        if void:
            _void_block(labels)
        ids = tuple(range(1, len(boxes) + 1))
        scenes[video] = (frames, labels)
        records[video] = ClipRecord("davis2017", video, frames, _masks(labels, ids), ids, ("",) * len(ids), caption,
                                    concepts, {c: ids for c in concepts}, motions, ignore=labels == 255)
    return records, scenes


def write_davis(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/DAVIS/{JPEGImages,Annotations}/480p/<video>/``, ``ImageSets/2017/val.txt`` and
    ``davis_semantics.json``; returns ``<root>/DAVIS``."""
    out = Path(root) / "DAVIS"
    _, scenes = _build_davis(seed)
    for video, (frames, labels) in scenes.items():
        names = [f"{t:05d}" for t in range(len(frames))]
        _write_jpegs(out / "JPEGImages" / "480p" / video, frames, names)
        for name, lab in zip(names, labels):
            _png(out / "Annotations" / "480p" / video / f"{name}.png", lab, palette=True)
    (out / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2017" / "val.txt").write_text("\n".join(_DAVIS) + "\n")
    semantics = {video: {str(i): c for i, c in spec[-1].items()} for video, spec in _DAVIS.items()}
    (out / "davis_semantics.json").write_text(json.dumps(semantics))
    if corrupt_clip:
        _truncate(out / "JPEGImages" / "480p" / "dog" / "00001.jpg")
    return out


# ----------------------------------------------------------------------------- VSPW
_VSPW_CLASSES = {"others": 0, "wall": 1, "sky": 2, "person": 3, "traffic_light": 4, "car": 5}
# video: frames, boxes with their class ids, void block, class names, concepts, caption.
_VSPW = {
    "video_a": (4, [("sky", (1, 6), (0, 0), None), ("red", (2, 1), (0, 1), None), ("yellow", (1, 1), (0, 0), None)],
                [2, 3, 4], True, ("sky", "person", "traffic_light"), ("sky", "person", "traffic light"),
                "sky, person and traffic light"),
    "video_b": (3, [("white", (4, 6), (0, 0), None), ("blue", (1, 2), (0, 1), None)], [1, 5], False,
                ("wall", "car"), ("wall", "car"), "wall and car"),
}


def _build_vspw(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records, scenes = {}, {}
    for video, (num_frames, boxes, classes, void, names, concepts, caption) in _VSPW.items():
        frames, boxes_labels = _paint(rng, num_frames, boxes)
        labels = np.zeros_like(boxes_labels)
        for k, class_id in enumerate(classes):
            labels[boxes_labels == k + 1] = class_id
        if void:
            _void_block(labels)
        ids = tuple(sorted(classes))
        order = [classes.index(i) for i in ids]
        scenes[video] = (frames, labels)
        records[video] = ClipRecord("vspw", video, frames, _masks(labels, ids), ids, tuple(names[k] for k in order),
                                    caption, tuple(concepts[k] for k in order),
                                    {concepts[k]: (classes[k],) for k in order},
                                    ignore=(labels == 0) | (labels == 255))
    return records, scenes


def write_vspw(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/VSPW_480p/{val.txt, label_num_dic_final.json, data/<video>/{origin,mask}/}``
    (greyscale ``L`` mask PNGs); returns ``<root>/VSPW_480p``."""
    out = Path(root) / "VSPW_480p"
    _, scenes = _build_vspw(seed)
    for video, (frames, labels) in scenes.items():
        names = [f"{t + 1:08d}" for t in range(len(frames))]
        _write_jpegs(out / "data" / video / "origin", frames, names)
        for name, lab in zip(names, labels):
            _png(out / "data" / video / "mask" / f"{name}.png", lab, palette=False)
    (out / "val.txt").write_text("\n".join(_VSPW) + "\n")
    (out / "label_num_dic_final.json").write_text(json.dumps(_VSPW_CLASSES))
    if corrupt_clip:
        _truncate(out / "data" / "video_b" / "origin" / "00000002.jpg")
    return out


# ----------------------------------------------------------------------------- PASCAL VOC 2012
# image: boxes with their class ids, void row, sorted ids, names, concepts, caption.
_VOC = {
    "2007_000032": ([("red", (1, 3), (0, 0), None), ("blue", (2, 1), (0, 0), None)], [1, 15], True,
                    ("aeroplane", "person"), ("aeroplane", "person"), "aeroplane and person"),
    "2007_000033": ([("green", (2, 2), (0, 0), None), ("white", (1, 2), (0, 0), None)], [16, 11], False,
                    ("diningtable", "pottedplant"), ("dining table", "potted plant"), "dining table and potted plant"),
}


def _build_voc(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records, scenes = {}, {}
    for image_id, (boxes, classes, void, names, concepts, caption) in _VOC.items():
        frames, boxes_labels = _paint(rng, 1, boxes)
        labels = np.zeros_like(boxes_labels)
        for k, class_id in enumerate(classes):
            labels[boxes_labels == k + 1] = class_id
        if void:
            labels[:, -1, :] = 255  # a void bottom row, as VOC marks object boundaries
        ids = tuple(sorted(classes))
        scenes[image_id] = (frames, labels)
        records[image_id] = ClipRecord("voc2012", image_id, frames, _masks(labels, ids), ids, names, caption,
                                       concepts, dict(zip(concepts, ((i,) for i in ids))), ignore=labels == 255)
    return records, scenes


def write_voc(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}``;
    returns ``<root>/VOCdevkit``."""
    out = Path(root) / "VOCdevkit"
    voc = out / "VOC2012"
    _, scenes = _build_voc(seed)
    for image_id, (frames, labels) in scenes.items():
        _write_jpegs(voc / "JPEGImages", frames, [image_id])
        _png(voc / "SegmentationClass" / f"{image_id}.png", labels[0], palette=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(_VOC) + "\n")
    if corrupt_clip:
        _truncate(voc / "JPEGImages" / "2007_000033.jpg")
    return out


# ----------------------------------------------------------------------------- ImageNet-Segmentation
# clip id: image id (wnid_number), (height, width), greyscale.
_IMAGENET = {"00000": ("n02085620_1205", (32, 48), False), "00001": ("n01440764_22", (24, 40), False),
             "00002": ("n02085620_7", (16, 32), True)}


def _build_imagenet_seg(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records, scenes = {}, {}
    for clip_id, (image_id, (height, width), grey) in _IMAGENET.items():
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if grey:
            frame[:] = frame[..., :1]
        mask = np.zeros((height, width), bool)
        top, left = (int(rng.integers(0, s // 2)) for s in (height, width))
        mask[top:top + height // 2, left:left + width // 3] = True
        scenes[clip_id] = (image_id, frame, mask, grey)
        records[clip_id] = ClipRecord("imagenet_seg", clip_id, frame[None], mask[None, None], (1,), ("",), "object",
                                      ("object",), {"object": (1,)})
    return records, scenes


def write_imagenet_seg(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/gtsegs_ijcv.mat``: HDF5 with ``/value/{img,gt,id}`` object references into
    ``/#refs#`` as MATLAB v7.3 stores them; returns the file."""
    import h5py

    path = Path(root) / "gtsegs_ijcv.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    _, scenes = _build_imagenet_seg(seed)
    with h5py.File(path, "w") as file:
        refs = file.create_group("#refs#")
        columns = {key: file.create_dataset(f"value/{key}", (len(scenes), 1), dtype=h5py.ref_dtype)
                   for key in ("img", "gt", "id")}
        for i, (clip_id, (image_id, frame, mask, grey)) in enumerate(scenes.items()):
            image = frame[..., 0].T if grey else frame.transpose(2, 1, 0)
            if corrupt_clip and clip_id == CORRUPT_CLIPS["imagenet_seg"]:
                image = image[:2]
            columns["img"][i, 0] = refs.create_dataset(f"img{i}", data=np.ascontiguousarray(image)).ref
            gt = refs.create_dataset(f"gt{i}", data=np.ascontiguousarray(mask.T).astype(np.uint8))
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = gt.ref
            columns["gt"][i, 0] = cell.ref
            chars = np.array([ord(c) for c in image_id], dtype=np.uint16).reshape(-1, 1)
            columns["id"][i, 0] = refs.create_dataset(f"id{i}", data=chars).ref
    return path


# ----------------------------------------------------------------------------- TAP-Vid
# Points are k/16 so that pixels (x * 48 = 3k, y * 32 = 2k) are exact.
_TAPVID_DAVIS = {"bear": (4, 3), "car-turn": (5, 2)}  # video: (frames, points)
_TAPVID_KINETICS = {"0000_of_0002": [(3, 2), (2, 1)], "0001_of_0002": [(3, 2)]}  # shard: [(frames, points)]


def _track_example(rng: np.random.Generator, num_frames: int, num_points: int, jpeg: bool) -> tuple[dict, dict]:
    """A pickled example and its truth: ``{"video", "points", "occluded"}`` and
    ``{"frames", "tracks", "visible"}`` (tracks in pixels, computed from the integer grid)."""
    if jpeg:
        frames, _ = _paint(rng, num_frames, [("red", (1, 1), (0, 1), None), ("yellow", (2, 1), (1, 0), None)])
    else:
        frames = rng.integers(0, 256, (num_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)
    grid = rng.integers(0, 17, (num_points, num_frames, 2))
    occluded = rng.random((num_points, num_frames)) < 0.3
    example = {"video": frames, "points": (grid / 16).astype(np.float32), "occluded": occluded}
    truth = {"frames": frames, "tracks": (grid * np.array([3, 2])).astype(np.float32), "visible": ~occluded}
    return example, truth


def _track_record(name: str, clip_id: str, truth: dict) -> ClipRecord:
    frames = truth["frames"]
    return ClipRecord(name, clip_id, frames, np.zeros((0, *frames.shape[:3]), bool), (), (), "a video", (),
                      tracks=truth["tracks"], visible=truth["visible"])


def _build_tapvid_davis(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    examples, records = {}, {}
    for video, (num_frames, num_points) in _TAPVID_DAVIS.items():
        examples[video], truth = _track_example(rng, num_frames, num_points, jpeg=False)
        records[video] = _track_record("tapvid_davis", video, truth)
    return records, examples


def write_tapvid_davis(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/tapvid_davis/tapvid_davis.pkl`` (a dict of raw-array examples); returns the file."""
    path = Path(root) / "tapvid_davis" / "tapvid_davis.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _, examples = _build_tapvid_davis(seed)
    if corrupt_clip:
        damaged = CORRUPT_CLIPS["tapvid_davis"]
        examples[damaged] = dict(examples[damaged], video=examples[damaged]["video"][..., 0])
    path.write_bytes(pickle.dumps(examples, protocol=4))
    return path


def _build_tapvid_kinetics(seed: int) -> tuple[dict[str, ClipRecord], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    shards, records = {}, {}
    for shard, clips in _TAPVID_KINETICS.items():
        shards[shard] = []
        for i, (num_frames, num_points) in enumerate(clips):
            example, truth = _track_example(rng, num_frames, num_points, jpeg=True)
            shards[shard].append(example)
            records[f"{shard}__{i:04d}"] = _track_record("tapvid_kinetics", f"{shard}__{i:04d}", truth)
    return records, shards


def write_tapvid_kinetics(root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write ``<root>/tapvid_kinetics/<shard>.pkl``: lists of examples whose frames are JPEG bytes
    (a numpy bytes array in the first shard, as the upstream script writes, a list in the second);
    returns the folder."""
    out = Path(root) / "tapvid_kinetics"
    out.mkdir(parents=True, exist_ok=True)
    _, shards = _build_tapvid_kinetics(seed)
    for s, (shard, examples) in enumerate(shards.items()):
        for i, example in enumerate(examples):
            encoded = [_jpeg(frame) for frame in example["video"]]
            if corrupt_clip and f"{shard}__{i:04d}" == CORRUPT_CLIPS["tapvid_kinetics"]:
                encoded[1] = encoded[1][:16]
            example["video"] = np.array(encoded) if s == 0 else encoded
            example["points"] = example["points"].astype(np.float64)
        (out / f"{shard}.pkl").write_bytes(pickle.dumps(examples))
    return out


# ----------------------------------------------------------------------------- registry
Builder = Callable[[int], tuple[dict[str, ClipRecord], Any]]
Writer = Callable[..., Path]

#: Dataset name -> (truth builder, writer), for every reader but ``"shapes"``.
FIXTURES: dict[str, tuple[Builder, Writer]] = {
    "mevis": (_build_mevis, write_mevis), "davis2017": (_build_davis, write_davis),
    "vspw": (_build_vspw, write_vspw), "voc2012": (_build_voc, write_voc),
    "imagenet_seg": (_build_imagenet_seg, write_imagenet_seg),
    "tapvid_davis": (_build_tapvid_davis, write_tapvid_davis),
    "tapvid_kinetics": (_build_tapvid_kinetics, write_tapvid_kinetics),
}


def _fixture(name: str) -> tuple[Builder, Writer]:
    if name not in FIXTURES:
        raise ValueError(f"no dataset fixture {name!r}; fixtures exist for {sorted(FIXTURES)}")
    return FIXTURES[name]


def write_fixture(name: str, root: str | os.PathLike, seed: int = 0, corrupt_clip: bool = False) -> Path:
    """Write dataset ``name``'s tiny fixture under ``root``; returns the path for ``open_dataset(name, path)``.

    Args:
        corrupt_clip: damage the clip :data:`CORRUPT_CLIPS` ``[name]`` so that only its ``load`` fails.

    Raises:
        ValueError: no fixture for ``name`` (the message lists those there are).
    """
    return _fixture(name)[1](root, seed=seed, corrupt_clip=corrupt_clip)


def fixture_truth(name: str, seed: int = 0) -> dict[str, ClipRecord]:
    """The records (by clip id, sorted) the reader of ``name`` must give for ``write_fixture(name, root, seed)``
    with default options; ``attrs`` are empty and JPEG frames are the pre-compression frames."""
    records, _ = _fixture(name)[0](seed)
    return dict(sorted(records.items()))
