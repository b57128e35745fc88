"""Overlay video export (vidinterp.export): read the MP4/GIF back and check frames, colours and
which latent frame's map each pixel frame shows."""

from __future__ import annotations

import os
import re

import imageio.v3 as iio
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import vidinterp
import vidinterp.testing
from vidinterp.analyses import CrossAttention
from vidinterp.export import colour_table, export_overlay, overlay_frames
from vidinterp.plotting.style import DEFAULT_COLORSCALE, DEFAULT_OPACITY

GREY = 100
CELL = 8                              # pixels per token
SPANS = [(0, 0), (1, 4), (5, 8)]      # pixel frames of each latent frame (a causal VAE with k = 4)
TOLERANCE = {"mp4": 10, "gif": 8}     # per channel, of 255 (module docstring of vidinterp.export)


def planted_maps() -> xr.Dataset:
    """4x4 token maps over 3 latent frames: latent frame f has its maximum (1) at token (f, f),
    0.5 at token (3, 0) and 0 elsewhere, for the concept "hot"; "cold" is the transpose."""
    values = np.zeros((2, 3, 4, 4), np.float32)
    for frame in range(3):
        values[0, frame, frame, frame] = 1.0
        values[0, frame, 3, 0] = 0.5
    values[1] = values[0].transpose(0, 2, 1)
    centres = (np.arange(4) + 0.5) * CELL
    return xr.Dataset(
        {"imap": (("concept", "frame", "y", "x"), values)},
        coords={"concept": ["hot", "cold"], "frame": np.arange(3), "y": np.arange(4), "x": np.arange(4),
                "pixel_frame_first": ("frame", [s for s, _ in SPANS]), "pixel_frame_last": ("frame", [e for _, e in SPANS]),
                "y_pixel": ("y", centres), "x_pixel": ("x", centres)})


VIDEO = np.full((9, 32, 32, 3), GREY, np.uint8)
TABLE = colour_table(DEFAULT_COLORSCALE)


def blended(level: int) -> np.ndarray:
    return (1 - DEFAULT_OPACITY) * GREY + DEFAULT_OPACITY * TABLE[level].astype(float)


def read(path, fps: float = 8) -> np.ndarray:
    """The frames of an exported file, one per 1/fps s of playback: a GIF stores a run of
    identical frames once with the run's duration (Pillow), so its frames are repeated here."""
    if path.suffix == ".gif":
        frames = []
        with Image.open(path) as gif:
            for index in range(gif.n_frames):
                gif.seek(index)
                repeats = gif.info["duration"] / (1000 / fps)  # GIF delays are whole 1/100 s: 125 ms -> 120
                assert abs(repeats - round(repeats)) < 0.1, f"GIF frame {index} lasts {gif.info['duration']} ms"
                frames += [np.asarray(gif.convert("RGB"))] * round(repeats)
        return np.stack(frames).astype(int)
    return iio.imread(path, plugin="pyav").astype(int)


def cell_colour(frames: np.ndarray, pixel_frame: int, y: int, x: int) -> np.ndarray:
    """Mean colour of the inner 4x4 pixels of token (y, x) (away from edges, where H.264's
    chroma subsampling blurs)."""
    return frames[pixel_frame, y * CELL + 2:y * CELL + 6, x * CELL + 2:x * CELL + 6].reshape(-1, 3).mean(axis=0)


@pytest.fixture(scope="module", params=["mp4", "gif"])
def exported(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / f"overlay.{request.param}"
    export_overlay(planted_maps(), path, method="imap", concept="hot", video=VIDEO, fps=8)
    return request.param, read(path)


def test_one_frame_per_pixel_frame(exported):
    """The MP4 holds 9 frames; the GIF plays 9 frames of 125 ms (stored as 3: runs of identical frames)."""
    kind, frames = exported
    assert frames.shape == (9, 32, 32, 3)


def test_hot_cell_has_the_top_colour_of_the_scale_blended(exported):
    kind, frames = exported
    for latent, (first, last) in enumerate(SPANS):
        for pixel_frame in range(first, last + 1):
            assert np.abs(cell_colour(frames, pixel_frame, latent, latent) - blended(255)).max() <= TOLERANCE[kind]
            assert np.abs(cell_colour(frames, pixel_frame, 3, 0) - blended(128)).max() <= TOLERANCE[kind]
            assert np.abs(cell_colour(frames, pixel_frame, 0, 3) - blended(0)).max() <= TOLERANCE[kind]


def test_frames_follow_the_latent_frame_of_their_span(exported):
    """Token (1, 1) is hot only in latent frame 1 = pixel frames 1..4: cold before and after."""
    kind, frames = exported
    hot, cold = blended(255), blended(0)
    shown = [cell_colour(frames, pixel_frame, 1, 1) for pixel_frame in range(9)]
    assert [bool(np.abs(colour - hot).max() <= TOLERANCE[kind]) for colour in shown] == [False] + [True] * 4 + [False] * 4
    assert all(np.abs(shown[p] - cold).max() <= TOLERANCE[kind] for p in (0, 5, 6, 7, 8))


def test_overlay_frames_are_exact():
    frames = overlay_frames(planted_maps(), method="imap", concept="cold", video=VIDEO)
    assert frames.dtype == np.uint8 and frames.shape == (9, 32, 32, 3)
    # "cold" is the transpose of "hot": token (y=0, x=3) is 0.5 there
    assert np.array_equal(frames[7, 0, 24], np.rint(blended(128)).astype(np.uint8))
    alone = overlay_frames(planted_maps(), method="imap", concept="hot")  # no video: the colours alone
    assert np.array_equal(alone[2, 9, 9], TABLE[255]) and np.array_equal(alone[2, 0, 31], TABLE[0])


def test_scale_modes_differ_as_documented():
    maps = planted_maps()
    maps["imap"] = maps["imap"] * xr.DataArray([1.0, 1.0, 0.25], dims="frame")  # latent frame 2 is weaker
    per_frame = overlay_frames(maps, method="imap", concept="hot", video=VIDEO, scale="frame")
    per_concept = overlay_frames(maps, method="imap", concept="hot", video=VIDEO, scale="concept")
    hot_pixel = (8, 2 * CELL + 3, 2 * CELL + 3)  # pixel frame 8 is latent frame 2, token (2, 2)
    assert np.array_equal(per_frame[hot_pixel], np.rint(blended(255)).astype(np.uint8))
    assert np.array_equal(per_concept[hot_pixel], np.rint(blended(64)).astype(np.uint8))


def test_a_real_trace_exports_every_pixel_frame(tmp_path):
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, analyses=[CrossAttention()])
    path = export_overlay(trace, tmp_path / "dog.gif", method="cross_attention", concept="dog", interpolation="bilinear")
    assert read(path).shape == trace.video.shape


EARLIER = b"an earlier export: these bytes must stay\n"


@pytest.mark.parametrize("arguments, error, message", [
    ({"path": "out.avi"}, ValueError, r"must end in one of \['\.gif', '\.mp4'\]"),
    ({"method": "gramcol"}, ValueError, r"unknown method 'gramcol'; the maps are \['imap'\]"),
    ({"concept": "dog"}, ValueError, r"unknown concept 'dog'; the maps have \['hot', 'cold'\]"),
    ({"scale": "clip"}, ValueError, r"scale must be one of \('frame', 'concept', 'global'\), got 'clip'"),
    ({"interpolation": "cubic"}, ValueError, r"interpolation must be one of \('nearest', 'bilinear'\)"),
    ({"colorscale": "NoSuchScale"}, ValueError, r"unknown colorscale 'NoSuchScale'"),
    ({"fps": 0}, ValueError, r"fps must be a positive number"),
    ({"opacity": 1.5}, ValueError, r"opacity must be in \[0, 1\], got 1.5"),
    ({"video": VIDEO[:, :16]}, ValueError, r"video frames are 16x32 pixels; the maps cover 32x32"),
])
def test_bad_input_is_refused_and_leaves_the_earlier_file(tmp_path, arguments, error, message):
    path = tmp_path / arguments.pop("path", "out.mp4")
    path.write_bytes(EARLIER)
    call = {"method": "imap", "concept": "hot", "video": VIDEO, **arguments}
    with pytest.raises(error, match=message):
        export_overlay(planted_maps(), path, **call)
    assert path.read_bytes() == EARLIER and os.listdir(tmp_path) == [path.name]


def test_failed_write_leaves_the_earlier_file(tmp_path, monkeypatch):
    import vidinterp.export as export

    path = tmp_path / "out.gif"
    path.write_bytes(EARLIER)

    def broken(temporary, frames, fps):
        temporary.write_bytes(b"half a GIF")
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_gif", broken)
    with pytest.raises(OSError, match="disk full"):
        export_overlay(planted_maps(), path, method="imap", concept="hot", video=VIDEO)
    assert path.read_bytes() == EARLIER and os.listdir(tmp_path) == ["out.gif"]


def test_trace_or_maps_must_be_a_trace_or_a_dataset(tmp_path):
    with pytest.raises(TypeError, match=re.escape("a vidinterp.Trace or its maps (an xarray.Dataset), got ndarray")):
        export_overlay(np.zeros(3), tmp_path / "x.gif", method="imap", concept="hot")


def test_trace_export_is_export_overlay(tmp_path):
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, analyses=[CrossAttention()])
    method = trace.export(tmp_path / "method.gif", method="cross_attention", concept="dog")
    direct = export_overlay(trace, tmp_path / "direct.gif", method="cross_attention", concept="dog")
    assert method.read_bytes() == direct.read_bytes() and len(read(method)) >= 1
