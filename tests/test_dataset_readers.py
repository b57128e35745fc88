"""Tests of the dataset readers (vidinterp.datasets.{mevis,davis,vspw,imagenet_seg,voc,tapvid,sources})
against the tiny fixtures of vidinterp.testing.dataset_layouts, whose answers are known."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidinterp.datasets.mevis import decode_coco_rle, motion_words
from vidinterp.datasets.records import ClipRecord, DatasetLayoutError
from vidinterp.datasets.sources import DATASETS, open_dataset
from vidinterp.datasets.tapvid import UnsafePickleError, convert_tapvid, load_pickle
from vidinterp.testing.dataset_layouts import (CORRUPT_CLIPS, FIXTURES, JPEG_TOLERANCE, encode_coco_rle,
                                               fixture_truth, write_fixture)

NAMES = sorted(FIXTURES)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {name: write_fixture(name, root / name) for name in NAMES}


@pytest.fixture(scope="module")
def corrupt_fixtures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corrupt")
    return {name: write_fixture(name, root / name, corrupt_clip=True) for name in NAMES}


def assert_matches(record: ClipRecord, expected: ClipRecord) -> None:
    """Every field of ``record`` equals ``expected`` (frames within the JPEG tolerance)."""
    assert (record.dataset, record.clip_id) == (expected.dataset, expected.clip_id)
    assert record.frames.shape == expected.frames.shape and record.frames.dtype == np.uint8
    assert np.abs(record.frames.astype(int) - expected.frames).max() <= JPEG_TOLERANCE, record.clip_id
    np.testing.assert_array_equal(record.masks, expected.masks)
    for field in ("mask_ids", "mask_names", "caption", "concepts", "concept_masks", "motion_words"):
        assert getattr(record, field) == getattr(expected, field), (record.clip_id, field)
    for field in ("tracks", "visible", "ignore"):
        got, want = getattr(record, field), getattr(expected, field)
        assert (got is None) == (want is None), (record.clip_id, field)
        if want is not None:
            assert got.dtype == want.dtype, (record.clip_id, field)
            np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- records
@pytest.mark.parametrize("name", NAMES)
def test_records_match_the_fixture_truth(fixtures, name):
    source = open_dataset(name, fixtures[name])
    truth = fixture_truth(name)
    assert source.name == name and source.clip_ids() == list(truth)
    for clip_id, expected in truth.items():
        assert_matches(source.load(clip_id), expected)


def test_hand_checked_answers(fixtures):
    """A few answers written out by hand (not taken from the fixture module)."""
    mevis = open_dataset("mevis", fixtures["mevis"])
    assert mevis.clip_ids() == ["cat_run__0", "cat_run__1", "dog_jump__0"]
    two = mevis.load("cat_run__1")
    assert two.concepts == ("two cats",) and two.motion_words == () and two.mask_ids == (0, 1)
    assert not two.masks[1, 3].any() and two.masks[1, :3].sum(axis=(1, 2)).tolist() == [64, 64, 64]  # 8x8 box, gone at t=3
    assert two.masks[0].sum(axis=(1, 2)).tolist() == [128] * 4  # 8x16 box, never covered
    assert mevis.load("dog_jump__0").concepts == ("jumps", "turns")
    davis = open_dataset("davis2017", fixtures["davis2017"]).load("bike-packing")
    assert davis.concepts == ("bike", "packing") and davis.motion_words == ("packing",)
    assert davis.ignore[:, :4, :6].all() and davis.ignore.sum() == 3 * 24
    assert not (davis.masks.any(axis=0) & davis.ignore).any()
    vspw = open_dataset("vspw", fixtures["vspw"]).load("video_a")
    assert vspw.mask_names == ("sky", "person", "traffic_light") and vspw.caption == "sky, person and traffic light"
    tracks = open_dataset("tapvid_davis", fixtures["tapvid_davis"]).load("bear")
    points = pickle.loads(fixtures["tapvid_davis"].read_bytes())["bear"]["points"]
    np.testing.assert_array_equal(tracks.tracks[..., 0], points[..., 0] * 48)
    np.testing.assert_array_equal(tracks.tracks[..., 1], points[..., 1] * 32)


def test_davis_semantics(fixtures):
    source = open_dataset("davis2017", fixtures["davis2017"], semantics=fixtures["davis2017"] / "davis_semantics.json")
    record = source.load("bike-packing")
    assert record.mask_names == ("person", "bicycle") and record.concepts == ("person", "bicycle")
    assert record.concept_masks == {"person": (1,), "bicycle": (2,)} and record.caption == "person and bicycle"
    assert record.motion_words == ()
    partial = fixtures["davis2017"].parent / "partial_semantics.json"
    partial.write_text('{"bike-packing": {"1": "person"}}')
    with pytest.raises(DatasetLayoutError, match=r"partial_semantics\.json.*object ids \[2\]"):
        open_dataset("davis2017", fixtures["davis2017"], semantics=partial).load("bike-packing")


def test_vspw_stride_and_max_frames(fixtures):
    full = fixture_truth("vspw")["video_a"]
    record = open_dataset("vspw", fixtures["vspw"], stride=2).load("video_a")
    assert record.num_frames == 2 and record.attrs["frames"] == ["00000001.jpg", "00000003.jpg"]
    np.testing.assert_array_equal(record.masks, full.masks[:, ::2])
    assert open_dataset("vspw", fixtures["vspw"], stride=3, max_frames=1).load("video_a").num_frames == 1
    with pytest.raises(ValueError, match="stride must be an integer >= 1; got 0"):
        open_dataset("vspw", fixtures["vspw"], stride=0)


def test_imagenet_class_names(fixtures, tmp_path):
    names = tmp_path / "names.json"
    names.write_text('{"n02085620": "chihuahua"}')
    source = open_dataset("imagenet_seg", fixtures["imagenet_seg"], class_names=names, concept="thing")
    first, second = source.load("00000"), source.load("00001")
    assert (first.concepts, first.caption, first.mask_names) == (("chihuahua",), "chihuahua", ("chihuahua",))
    assert first.attrs["image_id"] == "n02085620_1205"
    assert (second.concepts, second.mask_names) == (("thing",), ("",))  # n01440764 is not in the list


def test_voc_accepts_every_root(fixtures):
    devkit = fixtures["voc2012"]
    for root in (devkit.parent, devkit, devkit / "VOC2012"):
        assert open_dataset("voc2012", root).clip_ids() == ["2007_000032", "2007_000033"]


def test_mevis_split_folder_and_missing_masks(fixtures, tmp_path):
    split = fixtures["mevis"] / "valid_u"
    assert open_dataset("mevis", split).clip_ids() == open_dataset("mevis", fixtures["mevis"]).clip_ids()
    shutil.copytree(split, tmp_path / "valid")
    (tmp_path / "valid" / "mask_dict.json").unlink()
    with pytest.raises(DatasetLayoutError, match=r"mask_dict\.json: file not found.*valid_u"):
        open_dataset("mevis", tmp_path, split="valid")


# ----------------------------------------------------------------------------- laziness and errors
@pytest.mark.parametrize("name", ["mevis", "davis2017", "vspw", "voc2012"])
def test_clip_ids_read_no_image(fixtures, tmp_path, name):
    copy = Path(shutil.copytree(fixtures[name], tmp_path / fixtures[name].name))
    for image in [*copy.rglob("*.jpg"), *copy.rglob("*.png")]:
        image.write_bytes(b"")
    source = open_dataset(name, copy)
    assert source.clip_ids() == list(fixture_truth(name))
    with pytest.raises(DatasetLayoutError, match="cannot decode"):
        source.load(source.clip_ids()[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_corrupt_clip_fails_alone(corrupt_fixtures, name):
    source = open_dataset(name, corrupt_fixtures[name])
    truth = fixture_truth(name)
    assert source.clip_ids() == list(truth)
    bad = CORRUPT_CLIPS[name]
    with pytest.raises(DatasetLayoutError, match="expected") as caught:
        source.load(bad)
    assert str(corrupt_fixtures[name]) in str(caught.value)
    for clip_id in truth:
        if clip_id != bad:
            assert_matches(source.load(clip_id), truth[clip_id])


def test_corrupt_frame_error_names_the_file(corrupt_fixtures):
    with pytest.raises(DatasetLayoutError, match=r"JPEGImages/480p/dog/00001\.jpg: cannot decode the image"):
        open_dataset("davis2017", corrupt_fixtures["davis2017"]).load("dog")
    with pytest.raises(DatasetLayoutError, match=r"0001_of_0002\.pkl \['0001_of_0002__0000'\]: frame 1 is not"):
        open_dataset("tapvid_kinetics", corrupt_fixtures["tapvid_kinetics"]).load("0001_of_0002__0000")


@pytest.mark.parametrize("name, missing", [
    ("mevis", r"valid_u/meta_expressions\.json: file not found"),
    ("davis2017", r"ImageSets/2017/val\.txt: file not found"),
    ("vspw", r"val\.txt: file not found"),
    ("voc2012", r"no ImageSets/Segmentation under"),
    ("imagenet_seg", r"empty: file not found"),
    ("tapvid_davis", r"holds no \*\.pkl and no \*\.npz files"),
    ("tapvid_kinetics", r"holds no \*\.pkl and no \*\.npz files"),
])
def test_a_wrong_root_names_the_missing_file_and_the_layout(tmp_path, name, missing):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=missing) as caught:
        open_dataset(name, tmp_path / "empty")
    assert "expected" in str(caught.value)


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    (tmp_path / "gtsegs_ijcv.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DatasetLayoutError, match=r"gtsegs_ijcv\.mat: cannot read /value/img and /value/gt .*"
                                                 r"expected the ImageNet-Segmentation file"):
        open_dataset("imagenet_seg", tmp_path / "gtsegs_ijcv.mat")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_clip_id(fixtures, name):
    with pytest.raises(KeyError, match="no clip 'nope'"):
        open_dataset(name, fixtures[name]).load("nope")


def test_rgb_annotation_is_refused(fixtures, tmp_path):
    from PIL import Image

    copy = Path(shutil.copytree(fixtures["davis2017"], tmp_path / "DAVIS"))
    png = copy / "Annotations" / "480p" / "dog" / "00000.png"
    Image.open(png).convert("RGB").save(png)
    with pytest.raises(DatasetLayoutError, match=r"dog/00000\.png: label image has mode 'RGB'"):
        open_dataset("davis2017", copy).load("dog")


def test_open_dataset_names_and_options(fixtures):
    assert set(DATASETS) == {"mevis", "davis2017", "vspw", "imagenet_seg", "voc2012", "tapvid_davis",
                             "tapvid_kinetics", "shapes"}
    assert DATASETS["shapes"] == "vidinterp.datasets.shapes_source:ShapesSource"
    with pytest.raises(ValueError, match=r"unknown dataset 'davis'; known datasets: \['davis2017'"):
        open_dataset("davis", fixtures["davis2017"])
    with pytest.raises(ValueError, match=r"takes the options \['split', 'resolution', 'semantics'\]"):
        open_dataset("davis2017", fixtures["davis2017"], stride=2)


def test_an_empty_frame_folder_is_named(fixtures, tmp_path):
    copy = Path(shutil.copytree(fixtures["vspw"], tmp_path / "VSPW_480p"))
    for frame in (copy / "data" / "video_b" / "origin").glob("*.jpg"):
        frame.unlink()
    with pytest.raises(DatasetLayoutError, match=r"video_b/origin: lists no frames; expected the VSPW layout"):
        open_dataset("vspw", copy).load("video_b")


# ----------------------------------------------------------------------------- COCO RLE and motion words
def test_rle_hand_examples():
    # [[0 1 1], [0 1 0]] column-major: 0 0 | 1 1 | 1 0 -> runs 2, 3, 1 -> "2", "3", "1"
    np.testing.assert_array_equal(decode_coco_rle({"size": [2, 3], "counts": "231"}), [[0, 1, 1], [0, 1, 0]])
    # [[0 1 1 0 1]] -> runs 1, 2, 1, 1; the fourth is stored as 1 - 2 = -1 -> 31 + 48 = "O"
    np.testing.assert_array_equal(decode_coco_rle({"size": [1, 5], "counts": b"121O"}), [[0, 1, 1, 0, 1]])
    # 100 = 3 * 32 + 4: chunk 4 with the continuation bit (36 -> "T"), then 3 -> "3"
    assert not decode_coco_rle({"size": [10, 10], "counts": "T3"}).any()
    assert encode_coco_rle(np.array([[0, 1, 1, 0, 1]], bool))["counts"] == "121O"
    np.testing.assert_array_equal(decode_coco_rle({"size": [2, 2], "counts": [1, 2, 1]}), [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="cover 2x3 = 6 pixels; they sum to 4"):
        decode_coco_rle({"size": [2, 3], "counts": "23O"})
    with pytest.raises(ValueError, match="outside the RLE alphabet"):
        decode_coco_rle({"size": [2, 3], "counts": "2 3"})


def test_rle_round_trip_and_pycocotools_oracle():
    rng = np.random.default_rng(0)
    masks = [rng.random(rng.integers(1, 40, 2)) < rng.random() for _ in range(30)]
    big = np.zeros((300, 400), bool)
    big[5:290, 7:390] = True
    big[100:110] = False
    for mask in [*masks, big, np.ones((3, 4), bool)]:
        np.testing.assert_array_equal(decode_coco_rle(encode_coco_rle(mask)), mask)
    try:
        from pycocotools import mask as coco
    except ImportError:
        return
    for mask in [*masks, big]:
        reference = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert reference["counts"].decode() == encode_coco_rle(mask)["counts"]
        np.testing.assert_array_equal(decode_coco_rle(reference), mask)


def test_motion_words_rule():
    assert motion_words("The man sitting down then stands up") == ("sitting", "stands")
    assert motion_words("a bird flies away; the bird flies") == ("flies",)
    assert motion_words("puppy that stopped moving") == ("stopped", "moving")
    assert motion_words("cat that ran off, carried by a girl") == ("ran", "carried")
    assert motion_words("the building on the left during the morning") == ()
    assert motion_words("two cats") == ()


# ----------------------------------------------------------------------------- pickles
class _Shell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_Shell, _Eval])
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, payload):
    marker = tmp_path / "executed"
    evil = tmp_path / "tapvid_davis.pkl"
    evil.write_bytes(pickle.dumps({"bear": {"video": payload(marker), "points": np.zeros((1, 1, 2))}}))
    for attempt in (lambda: load_pickle(evil), lambda: open_dataset("tapvid_davis", evil).clip_ids(),
                    lambda: convert_tapvid(evil, tmp_path / "out")):
        with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|nt|builtins)\.(system|eval).*"
                                                    r"convert_tapvid\(.*trusted=True\)"):
            attempt()
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickles_of_arrays_load(tmp_path, protocol):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.bool_(True), np.float64(2.5), b"\xff\xd8"],
            "c": np.array([b"ab", b"c"]), "d": {1, 2}, "e": (np.uint8(3), "text")}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["a"], data["a"])
    assert loaded["a"].dtype == np.float32 and loaded["b"] == data["b"] and loaded["d"] == {1, 2}
    assert loaded["c"].tolist() == [b"ab", b"c"] and loaded["e"] == data["e"]


@pytest.mark.parametrize("name", ["tapvid_davis", "tapvid_kinetics"])
def test_npz_conversion_round_trip(fixtures, tmp_path, name):
    out = convert_tapvid(fixtures[name], tmp_path / "npz")
    assert sorted(p.stem for p in out.glob("*.npz")) == list(fixture_truth(name))
    if name == "tapvid_kinetics":
        with np.load(out / "0000_of_0002__0000.npz", allow_pickle=False) as data:
            assert set(data.files) == {"jpeg_bytes", "jpeg_offsets", "points", "occluded"}
    converted, original = open_dataset(name, out), open_dataset(name, fixtures[name])
    assert converted.clip_ids() == original.clip_ids()
    for clip_id, expected in fixture_truth(name).items():
        record = converted.load(clip_id)
        assert_matches(record, expected)
        np.testing.assert_array_equal(record.frames, original.load(clip_id).frames)

