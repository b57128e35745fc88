"""Video input (vidinterp.video, vidinterp.media): every format decodes to the frames written,
frames are picked by time, crop and pad put the right pixels where they belong, the resample
modes of a trace behave as documented, and every decoder failure is one clear error."""

from __future__ import annotations

import os
import warnings
import weakref

import numpy as np
import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.media import readers
from vidinterp.media.fitting import FrameFitter, plan_frame
from vidinterp.media.timing import NearestPicker, nearest_indices, target_times
from vidinterp.registry import adapter_for
from vidinterp.testing.video_clips import (
    square_centres,
    square_frames,
    write_folder,
    write_gif,
    write_mp4,
    write_webp,
)
from vidinterp.video import (
    VideoReadError,
    VideoResampledWarning,
    as_frames,
    fit_video,
    prepare_video,
    probe_video,
    read_video,
)

#: Frame times with a long pause before the last frame: picking by time and by index differ.
PAUSED_MS = [0, 40, 80, 120, 160, 200, 240, 1200]
#: 5 frames evenly over 0..1.2 s: 0, 0.3, 0.6, 0.9, 1.2 s -> the nearest frames by time.
BY_TIME = [0, 6, 6, 7, 7]
BY_INDEX = [0, 2, 4, 5, 7]  # what np.linspace over indices would pick


@pytest.fixture(scope="module")
def pipe():
    return vidinterp.testing.tiny_pipeline("cogvideox")


@pytest.fixture(scope="module")
def adapter(pipe):
    return adapter_for(pipe)


def left_edges(frames: np.ndarray) -> list[int]:
    """The square's left edge per frame (``square_frames``: 12-pixel square at 4 + 4 i)."""
    return [int(round(x - 5.5)) for x in square_centres(frames)[:, 1]]


def index_of(frames: np.ndarray) -> list[int]:
    """Which ``square_frames`` frame each decoded frame is."""
    return [(edge - 4) // 4 for edge in left_edges(frames)]


# ---------------------------------------------------------------- formats decode to the frames written
def test_mp4_gif_webp_and_folder_decode_to_the_frames_written(tmp_path):
    frames = square_frames(12)
    paths = {
        "mp4": write_mp4(tmp_path / "clip.mp4", frames, fps=10),
        "gif": write_gif(tmp_path / "clip.gif", frames, 100),
        "webp": write_webp(tmp_path / "clip.webp", frames, 100),
        "folder": write_folder(tmp_path / "frames", frames),
    }
    for kind, path in paths.items():
        decoded = read_video(path)
        assert decoded.dtype == np.uint8 and decoded.shape == (12, 48, 64, 3), kind
        assert np.abs(decoded.astype(int) - frames).max() <= 2, kind  # lossless (crf 0, palette, PNG)
        assert index_of(decoded) == list(range(12)), kind
    assert probe_video(paths["gif"]).fps == pytest.approx(10) and probe_video(paths["folder"]).fps is None
    assert np.allclose(probe_video(paths["mp4"]).times, np.arange(12) / 10)


def test_folder_is_read_in_natural_order_ignoring_other_files(tmp_path):
    folder = write_folder(tmp_path / "frames", square_frames(12))  # frame0.png .. frame11.png
    (folder / "notes.txt").write_text("not a frame")
    write_folder(folder, square_frames(1, colour=(0, 0, 0)), pattern=".hidden{index}.png")
    info = probe_video(folder)
    assert info.frames == 12 and info.reader.startswith("PIL")
    assert index_of(read_video(folder)) == list(range(12))  # name order would be 0, 1, 10, 11, 2, ...


def test_a_file_is_recognised_by_its_bytes_not_its_name(tmp_path):
    frames = square_frames(4)
    gif = write_gif(tmp_path / "clip.gif", frames, 100)
    renamed = tmp_path / "clip.mp4"
    renamed.write_bytes(gif.read_bytes())
    assert probe_video(renamed).reader.startswith("PIL") and index_of(read_video(renamed)) == [0, 1, 2, 3]


def test_still_image_is_a_video_of_one_frame(tmp_path):
    from PIL import Image

    Image.fromarray(square_frames(1)[0]).save(tmp_path / "still.png")
    assert read_video(tmp_path / "still.png").shape == (1, 48, 64, 3)


def test_transparency_is_composited_over_black(tmp_path):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba).save(tmp_path / "half.png")
    frame = read_video(tmp_path / "half.png")[0]
    assert (frame[:, :4] == 200).all() and (frame[:, 4:] == 0).all()


# ---------------------------------------------------------------- frames are picked by time
def test_time_sampling_follows_container_timestamps(tmp_path):
    path = write_mp4(tmp_path / "paused.mp4", square_frames(8), times=np.array(PAUSED_MS) / 1000)
    assert np.allclose(probe_video(path).times, np.array(PAUSED_MS) / 1000)
    assert index_of(fit_video(path, 5, 48, 64)) == BY_TIME != BY_INDEX


@pytest.mark.parametrize("writer", [write_gif, write_webp], ids=["gif", "webp"])
def test_time_sampling_follows_frame_durations(tmp_path, writer):
    durations = list(np.diff(PAUSED_MS)) + [40]
    path = writer(tmp_path / f"paused.{writer.__name__[6:]}", square_frames(8), durations)
    assert np.allclose(probe_video(path).times, np.array(PAUSED_MS) / 1000)
    assert index_of(fit_video(path, 5, 48, 64)) == BY_TIME


def test_without_timing_frames_are_picked_evenly_by_index(tmp_path):
    folder = write_folder(tmp_path / "frames", square_frames(8))
    assert index_of(fit_video(folder, 5, 48, 64)) == [0, 2, 3, 5, 7]  # 0, 1.75, 3.5, 5.25, 7: ties to the earlier
    assert index_of(fit_video(square_frames(8), 1, 48, 64)) == [3]  # one frame: the middle (3.5 -> 3)
    assert index_of(fit_video(square_frames(3), 5, 48, 64)) == [0, 0, 1, 1, 2]  # fewer frames: repeated


def test_picking_on_a_stream_equals_picking_on_known_times():
    rng = np.random.default_rng(0)
    for _ in range(200):
        times = np.cumsum(rng.choice([0.01, 0.04, 0.5], size=int(rng.integers(1, 30))))
        targets = target_times(times, int(rng.integers(1, 40)))
        loads = []
        picker = NearestPicker(targets, lambda handle: loads.append(handle) or handle)
        for index, time in enumerate(times):
            picker.offer(time, index)
        assert picker.finish() == list(nearest_indices(times, targets))
        assert loads == sorted(set(loads))  # each picked frame loaded once, in order


def test_picker_stops_early_and_ties_go_to_the_earlier_frame():
    picker = NearestPicker(np.array([0.5, 1.0]), lambda handle: handle)
    picker.offer(0.0, "a")
    picker.offer(1.0, "b")  # 0.5 is as near to a as to b: a
    assert picker.done and picker.finish() == ["a", "b"]
    assert NearestPicker(np.array([1.0]), lambda handle: handle).finish() is None


# ---------------------------------------------------------------- crop and pad
def bands(height: int, width: int) -> np.ndarray:
    """One frame: left third red, middle third green, right third blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    frame[:, :third, 0] = 255
    frame[:, third:2 * third, 1] = 255
    frame[:, 2 * third:, 2] = 255
    return frame


def test_crop_keeps_the_centre_of_a_wide_frame():
    fitted = fit_video(bands(40, 120)[None], 1, 40, 40)[0]
    assert (fitted[..., 1] == 255).all() and (fitted[..., [0, 2]] == 0).all()  # only the green middle


def test_crop_keeps_the_middle_rows_of_a_tall_frame():
    tall = np.zeros((120, 40, 3), np.uint8)
    tall[40:80] = 255
    assert (fit_video(tall[None], 1, 40, 40)[0] == 255).all()


def test_pad_keeps_everything_and_adds_black_bars():
    fitted = fit_video(bands(40, 120)[None], 1, 40, 40, fit="pad")[0]
    plan = plan_frame((40, 120), (40, 40), "pad")
    top, left, height, width = plan.placed
    assert (top, left, height, width) == (13, 0, 13, 40)  # 40x120 -> 13x40 in the middle
    assert (fitted[:top] == 0).all() and (fitted[top + height:] == 0).all()  # black bars
    content = fitted[top:top + height]
    assert content[:, 2, 0] .min() > 200 and content[:, 20, 1].min() > 200 and content[:, 37, 2].min() > 200
    assert plan.describe() == "resize to 13x40, pad with black to 40x40"


def test_same_aspect_only_resizes_and_equal_size_passes_through():
    frame = bands(60, 90)
    assert plan_frame((60, 90), (40, 60), "crop").window == (0, 0, 60, 90)
    assert plan_frame((60, 90), (40, 60), "pad").placed == (0, 0, 40, 60)
    assert FrameFitter((60, 90))(frame) is frame


# ---------------------------------------------------------------- streaming: only picked frames decoded
def test_only_the_picked_images_of_a_folder_are_decoded(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "frames", square_frames(12))
    decoded = []
    original = readers.pil_rgb
    monkeypatch.setattr(readers, "pil_rgb", lambda image: decoded.append(image.filename) or original(image))
    fit_video(folder, 3, 24, 32)
    assert [os.path.basename(name) for name in decoded] == ["frame0.png", "frame5.png", "frame11.png"]


def test_video_frames_are_fitted_as_decoded_and_never_accumulate(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "long.mp4", square_frames(40, 96, 256, step=5), fps=25)
    converted = []
    original = readers.PyAVReader._rgb

    def counting(self, frame):
        full = original(self, frame)
        alive = sum(reference() is not None for reference in converted)
        assert alive == 0, f"{alive} full-size frames still held when the next one is converted"
        converted.append(weakref.ref(full))
        return full

    monkeypatch.setattr(readers.PyAVReader, "_rgb", counting)
    fitted = fit_video(path, 5, 24, 32)
    assert fitted.shape == (5, 24, 32, 3) and len(converted) == 5  # 5 of 40 frames converted


# ---------------------------------------------------------------- arrays
def test_arrays_grey_rgba_floats_and_tensors_are_converted():
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    assert np.array_equal(as_frames(grey), np.repeat(grey, 3, axis=-1))
    rgba = np.full((1, 2, 2, 4), 200, np.uint8)
    rgba[..., 3] = 0
    assert (as_frames(rgba) == 0).all()
    assert (as_frames(np.full((1, 2, 2, 3), 0.5)) == 128).all()
    assert (as_frames(torch.full((1, 2, 2, 3), 1.0, dtype=torch.bfloat16)) == 255).all()
    assert as_frames([np.zeros((2, 2, 3), np.uint8)] * 3).shape == (3, 2, 2, 3)


@pytest.mark.parametrize("value, error, words", [
    (np.zeros((9, 32, 48)), ValueError, ["video", "[9, 32, 48]", "float64", "[frames, height, width, 3]"]),
    (np.zeros((2, 3, 8, 8), np.uint8), ValueError, ["channels must come last", "permute(0, 2, 3, 1)"]),
    (np.zeros((8, 8, 3), np.uint8), ValueError, ["video[None]"]),
    (np.zeros((2, 4, 4, 3), np.int16), TypeError, ["dtype int16", "astype(np.uint8)"]),
    (np.zeros((2, 4, 4, 3), bool), TypeError, ["dtype bool"]),
    (np.full((2, 4, 4, 3), np.nan), ValueError, ["96 NaN or infinite"]),
    (np.full((2, 4, 4, 3), 200.0), ValueError, ["span [200, 200]", "divide 0..255 pixels by 255"]),
    (np.zeros((0, 4, 4, 3), np.uint8), ValueError, ["[0, 4, 4, 3]", "no pixels"]),
    (torch.zeros(2, 4, 4, 3, dtype=torch.complex64), TypeError, ["dtype complex64"]),
    ({"frames": 1}, TypeError, ["video must be a path", "got dict"]),
])
def test_bad_arrays_name_video_what_they_got_and_what_is_expected(value, error, words):
    with pytest.raises(error) as raised:
        as_frames(value)
    assert all(word in str(raised.value) for word in words), str(raised.value)


# ---------------------------------------------------------------- resample modes of a trace
def test_default_fits_a_clip_with_one_line_notice(pipe, tmp_path):
    path = write_mp4(tmp_path / "wide.mp4", square_frames(20, 48, 112), fps=10)
    with pytest.warns(VideoResampledWarning) as caught:
        trace = vidinterp.trace(pipe, video=path, prompt="a dog", concepts=["dog"], num_inference_steps=3)
    notices = [w for w in caught if issubclass(w.category, VideoResampledWarning)]
    assert len(notices) == 1 and "\n" not in str(notices[0].message)
    message = str(notices[0].message)
    assert "20 frames at 48x112 (10 fps) -> 9 frames at 32x48" in message and "centre crop to 48x72" in message
    assert "CogVideoX" in message and "resample=True" in message and "resample=False" in message
    assert trace.video.shape == (9, 32, 48, 3)
    assert dict(trace.maps.sizes) == {"concept": 1, "frame": 3, "y": 4, "x": 6}


def test_a_clip_at_the_native_geometry_is_used_unchanged_without_notice(adapter):
    clip = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoResampledWarning)
        assert np.array_equal(prepare_video(adapter, clip), clip)
        assert prepare_video(adapter, square_frames(12, 40, 56, step=3), resample=True).shape == (9, 32, 48, 3)


def test_a_clip_the_model_takes_at_another_size_runs_at_the_native_size_by_default(adapter):
    clip = np.zeros((13, 64, 96, 3), np.uint8)  # valid for CogVideoX, larger than native
    with pytest.warns(VideoResampledWarning, match="13 frames at 64x96 -> 9 frames at 32x48"):
        assert prepare_video(adapter, clip).shape == (9, 32, 48, 3)
    assert prepare_video(adapter, clip, resample=False).shape == (13, 64, 96, 3)  # as it is, on request


def test_given_geometry_is_the_target_and_is_checked_before_decoding(adapter, tmp_path):
    clip = square_frames(20, 48, 112)
    assert prepare_video(adapter, clip, num_frames=13, height=48, width=64, resample=True).shape == (13, 48, 64, 3)
    missing = tmp_path / "missing.mp4"
    with pytest.raises(ValueError, match=r"num_frames must be 4\*n \+ 1.*got 8.*num_frames=8"):
        prepare_video(adapter, missing, num_frames=8, resample=True)  # refused before the path is opened


def test_resample_false_names_both_geometries_and_the_fix(pipe, tmp_path):
    path = write_mp4(tmp_path / "wide.mp4", square_frames(20, 48, 112), fps=10)
    with pytest.raises(ValueError) as raised:
        vidinterp.trace(pipe, video=path, prompt="a dog", concepts=["dog"], resample=False)
    message = str(raised.value)
    for words in ("wide.mp4", "20 frames at 48x112 (10 fps)", "9 frames at 32x48", "resample=True", "--resample"):
        assert words in message, message


@pytest.mark.parametrize("option, value, error", [
    ("resample", "yes", TypeError), ("resample", 1, TypeError), ("fit", "stretch", ValueError), ("fit", 2, TypeError),
])
def test_bad_resample_or_fit_values_are_named(adapter, option, value, error):
    with pytest.raises(error, match=option):
        prepare_video(adapter, np.zeros((9, 32, 48, 3), np.uint8), **{option: value})


def test_pad_through_prepare_video(adapter):
    wide = np.full((9, 40, 120, 3), 255, np.uint8)
    padded = prepare_video(adapter, wide, resample=True, fit="pad")
    # 40x120 -> 16x48 (scale 0.4) in rows 8..23 of 32x48
    assert (padded[:, :8] == 0).all() and (padded[:, 24:] == 0).all() and (padded[:, 8:24] == 255).all()


# ---------------------------------------------------------------- every decoder failure is one clear error
def assert_read_error(path, *words):
    with pytest.raises(VideoReadError) as raised:
        fit_video(path, 5, 32, 32)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message, message
    assert all(word in message for word in words), message
    return message


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_read_error(tmp_path / "empty.mp4", "the file is empty (0 bytes)")


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    assert_read_error(tmp_path / "notes.mp4", "PyAV (ffmpeg)")


def test_truncated_header(tmp_path):
    data = write_mp4(tmp_path / "clip.mp4", square_frames(8)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:200])
    assert_read_error(tmp_path / "cut.mp4", "PyAV (ffmpeg)")


def test_corrupt_gif(tmp_path):
    data = write_gif(tmp_path / "clip.gif", square_frames(4), 100).read_bytes()
    (tmp_path / "broken.gif").write_bytes(data[:13] + b"\xff" * 40)
    assert_read_error(tmp_path / "broken.gif", "PIL")


def test_truncated_animation_keeps_the_frames_before_the_cut(tmp_path):
    data = write_gif(tmp_path / "clip.gif", square_frames(8), 100).read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[:int(len(data) * 0.6)])
    with pytest.warns(readers.VideoReadWarning, match="cut.gif.*only the first"):
        frames = read_video(tmp_path / "cut.gif")
    assert 1 <= len(frames) < 8 and index_of(frames) == list(range(len(frames)))


def test_audio_only_file(tmp_path):
    import av

    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert_read_error(path, "no video stream (streams: audio)")


def test_folder_without_images_and_with_mixed_sizes(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert_read_error(tmp_path / "empty", "holds no images", "readme.txt")
    folder = write_folder(tmp_path / "mixed", square_frames(3))
    write_folder(folder, square_frames(1, 32, 64), pattern="frame9.png")
    assert_read_error(folder, "'frame0.png' is 48x64 but 'frame9.png' is 32x64")


def test_unreadable_folder(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "frames", square_frames(2))

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(readers.os, "scandir", refuse)
    assert_read_error(folder, "listing it failed", "PermissionError")


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found: .*nowhere.mp4"):
        fit_video(tmp_path / "nowhere.mp4", 5, 32, 32)
