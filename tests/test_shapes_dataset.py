"""Tests of the synthetic shapes clip generator (vidinterp.datasets.shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidinterp.datasets.shapes import (
    COLORS,
    DIRECTIONS,
    VOCABULARY,
    CaptionVocabularyError,
    ShapeObject,
    ShapesConfig,
    check_caption,
    generate_clip,
    clip_seed,
    generate_dataset,
    load_clip,
    load_clip_ground_truth,
    read_manifest,
    read_video,
    render_clip,
    write_dataset,
)

MOTION = ShapesConfig(num_objects=(2, 3), motion_probability=0.8, partial_motion_probability=0.5)


@pytest.fixture(scope="module")
def clips():
    return list(generate_dataset(MOTION, n=30, seed=7))


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b = generate_clip(MOTION, seed=3), generate_clip(MOTION, seed=3)
    assert a.objects == b.objects and a.caption == b.caption
    for name in ("frames", "masks", "moving", "tracks"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.frames, generate_clip(MOTION, seed=4).frames)


def test_dataset_clips_regenerate_from_their_seed(clips):
    again = list(generate_dataset(MOTION, n=3, seed=7))
    assert [c.objects for c in again] == [c.objects for c in clips[:3]]
    single = generate_clip(MOTION, clips[2].seed)
    np.testing.assert_array_equal(single.frames, clips[2].frames)
    assert generate_clip(ShapesConfig(seed=11)).objects == generate_clip(ShapesConfig(), seed=11).objects
    assert [c.seed for c in again] == [clip_seed(7, i) for i in range(3)]
    assert len({clip_seed(7, i) for i in range(100)} | {clip_seed(7, 1000, i) for i in range(1, 101)}) == 200
    assert all(0 <= clip_seed(7, i) < 2**63 for i in range(100))


def test_shapes_and_dtypes(clips):
    clip = clips[0]
    n, f, h, w = len(clip.objects), MOTION.num_frames, MOTION.height, MOTION.width
    assert clip.frames.shape == (f, h, w, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (n, f, h, w) and clip.masks.dtype == bool
    assert clip.moving.shape == (n, f) and clip.moving.dtype == bool
    assert clip.tracks.shape == (n, f, 2) and np.issubdtype(clip.tracks.dtype, np.floating)


def test_masks_match_rendered_pixels(clips):
    for clip in clips:
        assert clip.masks.sum(axis=0).max() <= 1, "masks of visible pixels must not overlap"
        for k, obj in enumerate(clip.objects):
            assert clip.masks[k].any(axis=(1, 2)).all(), "object invisible at some frame"
            pixels = clip.frames[clip.masks[k]]
            np.testing.assert_array_equal(pixels, np.broadcast_to(obj.rgb, pixels.shape))
        background = ~clip.masks.any(axis=0)
        assert (clip.frames[background] == MOTION.background_color).all()


def test_occlusion_follows_draw_order():
    back = ShapeObject("square", "red", 12, (20.0, 20.0))
    front = ShapeObject("circle", "blue", 12, (26.0, 20.0))
    clip = render_clip([back, front], num_frames=2, height=40, width=40)
    full_back = render_clip([back], num_frames=2, height=40, width=40).masks[0]
    overlap = full_back & clip.masks[1]
    assert overlap.any()
    assert not (clip.masks[0] & overlap).any()
    assert (clip.frames[overlap] == COLORS["blue"]).all()


def test_moving_labels_agree_with_track_displacement(clips):
    assert any(c.moving.any() for c in clips) and any((~c.moving).any() for c in clips)
    for clip in clips:
        step = np.diff(clip.tracks.astype(np.float64), axis=1)  # [objects, F - 1, 2]
        np.testing.assert_array_equal(np.linalg.norm(step, axis=-1) > 0, clip.moving[:, :-1])
        for k, obj in enumerate(clip.objects):
            if obj.direction is None:
                assert not clip.moving[k].any()
                continue
            unit = np.array(DIRECTIONS[obj.direction], dtype=float)
            moved = step[k][clip.moving[k, :-1]]
            np.testing.assert_allclose(moved @ unit, obj.speed, rtol=1e-5)  # constant speed along direction
            np.testing.assert_allclose(moved @ unit[::-1], 0.0, atol=1e-6)  # nothing across it


def test_objects_stay_in_frame(clips):
    for clip in clips:
        for k, obj in enumerate(clip.objects):
            half = obj.size / 2
            x, y = clip.tracks[k, :, 0], clip.tracks[k, :, 1]
            assert (x - half >= -0.5 - 1e-4).all() and (x + half <= MOTION.width - 0.5 + 1e-4).all()
            assert (y - half >= -0.5 - 1e-4).all() and (y + half <= MOTION.height - 0.5 + 1e-4).all()
            if obj.direction is not None:  # generated paths never hit the clamp
                start, stop = obj.motion_frames or (0, MOTION.num_frames)
                assert clip.moving[k].sum() == stop - start


def _path_midpoint(obj: ShapeObject, num_frames: int) -> np.ndarray:
    """Centre of an object's path: its start plus half its travel (``speed`` px per moving frame)."""
    start = np.asarray(obj.position)
    if obj.direction is None:
        return start
    first, stop = obj.motion_frames or (0, num_frames)
    return start + np.asarray(DIRECTIONS[obj.direction]) * obj.speed * (stop - first) / 2


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_position_spread_keeps_paths_near_the_centre(spread):
    config = ShapesConfig(num_objects=(1, 1), motion_probability=0.7, partial_motion_probability=0.5,
                          position_spread=spread)
    centre = np.array([(config.width - 1) / 2, (config.height - 1) / 2])
    for seed in range(40):
        obj = generate_clip(config, seed).objects[0]
        half_room = (config.width - obj.size) / 2  # centre range of a static object is centre +- this
        offset = np.abs(_path_midpoint(obj, config.num_frames) - centre)
        assert (offset <= spread * half_room + 1e-6).all(), (seed, obj, offset)
    anywhere = [generate_clip(ShapesConfig(num_objects=(1, 1)), seed).objects[0] for seed in range(40)]
    assert max(np.abs(_path_midpoint(o, config.num_frames) - centre).max() / ((config.width - o.size) / 2)
               for o in anywhere) > 0.6  # the default really spreads wider


def test_silhouettes_match_their_definitions():
    """Brute-force point-in-shape tests, one pixel centre at a time, against the renderer."""
    size, centre = 14, (15.3, 16.6)
    half = size / 2
    inside = {
        "circle": lambda dx, dy: dx * dx + dy * dy <= half * half,
        "square": lambda dx, dy: abs(dx) <= half and abs(dy) <= half,
        "ring": lambda dx, dy: (half - size / 4) ** 2 < dx * dx + dy * dy <= half * half,
        "bar": lambda dx, dy: abs(dx) <= half and abs(dy) <= size / 6,
        "column": lambda dx, dy: abs(dx) <= size / 6 and abs(dy) <= half,
    }
    for shape, test in inside.items():
        mask = render_clip([ShapeObject(shape, "red", size, centre)], 1, 32, 32).masks[0, 0]
        expected = np.array([[test(x - centre[0], y - centre[1]) for x in range(32)] for y in range(32)])
        np.testing.assert_array_equal(mask, expected, err_msg=shape)
    rows, cols = np.nonzero(render_clip([ShapeObject("bar", "red", size, centre)], 1, 32, 32).masks[0, 0])
    assert np.ptp(cols) > 2 * np.ptp(rows)  # a bar is wide, a column tall
    ring = render_clip([ShapeObject("ring", "red", size, (16.0, 16.0))], 1, 32, 32).masks[0, 0]
    assert not ring[14:19, 14:19].any() and ring.sum() > 0  # a hole in the middle


def test_clamp_at_border_stops_motion():
    obj = ShapeObject("square", "green", 8, (10.0, 16.0), direction="left", speed=2.0)
    clip = render_clip([obj], num_frames=8, height=32, width=32)
    x = clip.tracks[0, :, 0]
    np.testing.assert_allclose(x, [10, 8, 6, 4, 3.5, 3.5, 3.5, 3.5])  # clamped at size/2 - 0.5
    assert clip.moving[0].tolist() == [True, True, True, True, False, False, False, False]
    assert clip.masks[0, -1, :, 0].any()  # touches, but is not cut by, the left border
    away_from_border = render_clip([ShapeObject("square", "green", 8, (13.5, 16.0))], 1, 32, 32)
    assert clip.masks[0, -1].sum() == away_from_border.masks[0, 0].sum()  # same sub-pixel phase, same area


def test_partial_motion_interval():
    obj = ShapeObject(
        "triangle", "yellow", 10, (10.0, 30.0), direction="right", speed=1.5, motion_frames=(4, 10)
    )
    clip = render_clip([obj], num_frames=16, height=64, width=64)
    assert np.flatnonzero(clip.moving[0]).tolist() == list(range(4, 10))
    x = clip.tracks[0, :, 0]
    np.testing.assert_allclose(x[:5], 10.0)
    np.testing.assert_allclose(x[10:], 10.0 + 6 * 1.5)
    assert (clip.tracks[0, :, 1] == 30.0).all()


def test_generated_partial_motion_is_one_proper_interval():
    config = ShapesConfig(num_objects=(1, 1), motion_probability=1.0, partial_motion_probability=1.0)
    for clip in generate_dataset(config, n=10, seed=2):
        (obj,) = clip.objects
        start, stop = obj.motion_frames
        assert 0 <= start < stop <= config.num_frames and 2 <= stop - start < config.num_frames
        assert np.flatnonzero(clip.moving[0]).tolist() == list(range(start, stop))


def test_captions_concepts_and_concept_masks(clips):
    for clip in clips:
        assert check_caption(clip.caption) == clip.caption.split()
        assert clip.caption.count(" and ") == len(clip.objects) - 1
        assert set(clip.concepts) <= set(VOCABULARY)
    clip = next(c for c in clips if c.motion_words)
    word = clip.motion_words[0]
    expected = np.zeros_like(clip.masks[0])
    for k, obj in enumerate(clip.objects):
        if obj.direction == word:
            expected |= clip.masks[k] & clip.moving[k][:, None, None]
    np.testing.assert_array_equal(clip.concept_mask(word), expected)
    colour = clip.objects[0].color
    same_colour = [k for k, obj in enumerate(clip.objects) if obj.color == colour]
    np.testing.assert_array_equal(clip.concept_mask(colour), clip.masks[same_colour].any(axis=0))
    moving_pixels = (clip.masks & clip.moving[:, :, None, None]).any(axis=0)
    np.testing.assert_array_equal(clip.concept_mask("moving"), moving_pixels)
    absent = next(c for c in COLORS if c not in clip.colors)
    assert not clip.concept_mask(absent).any()
    with pytest.raises(ValueError, match="not a concept word"):
        clip.concept_mask("and")


def test_caption_vocabulary_error_lists_vocabulary():
    assert check_caption("a red circle moving left and a blue square") == [
        "a", "red", "circle", "moving", "left", "and", "a", "blue", "square",
    ]
    with pytest.raises(CaptionVocabularyError, match=r"\['dog', 'fast'\]") as info:
        check_caption("a red dog moving fast")
    assert all(word in str(info.value) for word in VOCABULARY)
    with pytest.raises(CaptionVocabularyError, match="empty"):
        check_caption("  ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 1}, "num_frames must be >= 2"),
        ({"num_objects": (3, 1)}, r"1 <= min <= max"),
        ({"motion_probability": 1.5}, r"motion_probability must be in \[0, 1\]"),
        ({"size_range": (2, 8)}, "4 <= min <= max"),
        ({"size_range": (10, 64)}, r"min\(height, width\)"),
        ({"speed_range": (5.0, 6.0)}, "must fit in the frame"),
        ({"colors": ("red", "pink")}, "'yellow'"),
        ({"background_color": (220, 30, 30)}, r"\['red'\]"),
        ({"position_spread": -0.1}, r"position_spread must be in \[0, 1\]"),
    ],
)
def test_config_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)


def test_image_background():
    rng = np.random.default_rng(0)
    backdrop = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    config = ShapesConfig(num_frames=4, height=32, width=48, size_range=(6, 10), num_objects=(1, 1))
    clip = generate_clip(config, seed=1, background=backdrop)
    outside = ~clip.masks[0]
    np.testing.assert_array_equal(clip.frames[outside], np.broadcast_to(backdrop, clip.frames.shape)[outside])
    with pytest.raises(ValueError, match=r"\[32, 48, 3\]"):
        generate_clip(config, seed=1, background=backdrop[:16])


def test_manifest_round_trip(tmp_path):
    config = ShapesConfig(
        num_frames=6, height=32, width=48, size_range=(8, 12), num_objects=(2, 2), motion_probability=1
    )
    written = list(generate_dataset(config, n=2, seed=3))
    manifest = write_dataset(tmp_path / "shapes", written, fps=4)
    assert manifest == tmp_path / "shapes" / "manifest.json"
    raw = json.loads(manifest.read_text())
    assert raw["vocabulary"] == list(VOCABULARY)
    assert all(not e["video"].startswith("/") and not e["masks"].startswith("/") for e in raw["entries"])

    entries = read_manifest(manifest.parent)
    assert [e.caption for e in entries] == [c.caption for c in written]
    for entry, clip in zip(entries, written):
        assert entry.objects == clip.objects
        assert list(entry.concepts) == clip.concepts and list(entry.motion_words) == clip.motion_words
        assert entry.seed == clip.seed and entry.fps == 4
        truth = load_clip_ground_truth(entry)
        for name in ("masks", "moving", "tracks"):
            np.testing.assert_array_equal(getattr(truth, name), getattr(clip, name))
        frames = read_video(entry.video)
        assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
        assert np.abs(frames.astype(int) - clip.frames).mean() < 2.0
        for k, obj in enumerate(entry.objects):
            mean_colour = frames[truth.masks[k]].mean(axis=0)
            np.testing.assert_allclose(mean_colour, obj.rgb, atol=6)
        np.testing.assert_array_equal(load_clip(entry).masks, clip.masks)


def test_read_manifest_rejects_other_json(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps([{"video": "x.mp4"}]))
    with pytest.raises(ValueError, match="vidinterp.shapes"):
        read_manifest(path)
