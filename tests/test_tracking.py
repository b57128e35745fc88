"""Point tracking: vidinterp.track on the planted model (exact displacements), on tiny pipelines
of three families and from a generated video; the layer/step defaults; the metrics against
hand-computed values; the plotly view; ``vidinterp track``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import vidinterp
from vidinterp.tracking import TRACKING_REFERENCES, tracking_layer_step
from vidinterp.tracking_metrics import evaluation_mask, pck, rescale_tracks, tapvid_metrics


# -------------------------------------------------------------------- metrics, by hand
#: two tracks over three frames of a 128 (high) x 64 (wide) video, queried at frames 0 and 1
TRUTH = np.array([[[10, 10], [10, 10], [10, 10]], [[20, 20], [20, 20], [20, 20]]], dtype=float)
PREDICTED = np.array([[[10, 10], [10.5, 10], [12, 11]], [[0, 0], [20, 20], [20, 21]]], dtype=float)
OCCLUDED = np.array([[False, False, False], [False, False, True]])
QUERIES = np.array([0, 1])


def test_pck_by_hand():
    # distances: track 0: 0, 0.5, sqrt(5); track 1: sqrt(800), 0, (occluded)
    assert pck(PREDICTED, TRUTH, OCCLUDED) == pytest.approx(4 / 5)
    assert pck(PREDICTED, TRUTH, OCCLUDED, threshold=1) == pytest.approx(3 / 5)
    assert pck(PREDICTED, TRUTH, OCCLUDED, threshold=0.5) == pytest.approx(2 / 5)  # strictly within
    assert pck(PREDICTED, TRUTH) == pytest.approx(5 / 6)
    after = evaluation_mask(QUERIES, 3)
    np.testing.assert_array_equal(after, [[False, True, True], [False, False, True]])
    np.testing.assert_array_equal(evaluation_mask(QUERIES, 3, "strided"), [[False, True, True], [True, False, True]])
    assert pck(PREDICTED, TRUTH, OCCLUDED, evaluate=after) == pytest.approx(1.0)
    assert math.isnan(pck(PREDICTED, TRUTH, np.ones((2, 3), dtype=bool)))
    with pytest.raises(ValueError, match=r"\[points, frames, 2\]"):
        pck(PREDICTED[..., 0], TRUTH)


def test_tapvid_metrics_by_hand():
    # at 256x256 the x offsets grow 4x and the y offsets 2x; evaluated (after the query frame):
    # track 0 frame 1 at 2 px, track 0 frame 2 at sqrt(8^2 + 2^2) = 8.25 px, track 1 frame 2 occluded
    np.testing.assert_allclose(rescale_tracks([[[1.0, 1.0]]], (128, 64)), [[[4.0, 2.0]]])
    predicted_occluded = np.array([[False, False, True], [False, False, False]])
    metrics = tapvid_metrics(PREDICTED, TRUTH, OCCLUDED, QUERIES, (128, 64), predicted_occluded=predicted_occluded)
    expected_delta = {1: 0.0, 2: 0.0, 4: 0.5, 8: 0.5, 16: 1.0}  # 2 px is not < 2; 8.25 px not < 8
    for threshold, value in expected_delta.items():
        assert metrics[f"delta_{threshold}"] == pytest.approx(value)
    assert metrics["delta_avg"] == pytest.approx(0.4)
    # OA: right on track 0 frame 1 only, of three evaluated points
    assert metrics["occlusion_accuracy"] == pytest.approx(1 / 3)
    # Jaccard: below 4 px no true positive; from 4 px, TP = track 0 frame 1, FN = track 0 frame 2
    # (predicted occluded), FP = track 1 frame 2 (visible predicted, occluded in truth)
    expected_jaccard = {1: 0.0, 2: 0.0, 4: 1 / 3, 8: 1 / 3, 16: 1 / 3}
    for threshold, value in expected_jaccard.items():
        assert metrics[f"jaccard_{threshold}"] == pytest.approx(value)
    assert metrics["average_jaccard"] == pytest.approx(0.2)
    plain = tapvid_metrics(PREDICTED, TRUTH, OCCLUDED, QUERIES, (128, 64))
    assert "average_jaccard" not in plain and "occlusion_accuracy" not in plain
    perfect = tapvid_metrics(TRUTH, TRUTH, OCCLUDED, QUERIES, (128, 64), predicted_occluded=OCCLUDED)
    assert perfect["delta_avg"] == perfect["average_jaccard"] == perfect["occlusion_accuracy"] == 1.0


# -------------------------------------------------------------------- layer and step defaults
def fake_adapter(family: str, layers: int):
    specs = [SimpleNamespace(layer=layer, kind="joint") for layer in range(layers)]
    return SimpleNamespace(family=family, site_specs=lambda: specs)


def test_layer_step_defaults():
    assert tracking_layer_step(fake_adapter("cogvideox", 30))[:3] == (17, 49, 50)
    assert tracking_layer_step(fake_adapter("hunyuan_video", 60))[:3] == (16, 29, 30)
    assert tracking_layer_step(fake_adapter("cogvideox", 30), num_inference_steps=25)[:3] == (17, 24, 25)
    layer, step, steps, source = tracking_layer_step(fake_adapter("cogvideox", 3))  # no layer 17: fallback
    assert (layer, step, steps) == (1, 49, 50) and "fallback" in source
    assert tracking_layer_step(fake_adapter("wan", 30), layer=4, step=2, num_inference_steps=4) == (4, 2, 4, "given")
    with pytest.raises(ValueError, match="layer 40"):
        tracking_layer_step(fake_adapter("wan", 30), layer=40)
    with pytest.raises(ValueError, match="step 50"):
        tracking_layer_step(fake_adapter("wan", 30), step=50)
    assert set(TRACKING_REFERENCES) == {"cogvideox", "hunyuan_video"}
    assert vidinterp.track is not None and "track" in vidinterp.__all__


# -------------------------------------------------------------------- planted: exact displacement
@pytest.fixture(scope="module")
def planted():
    from vidinterp.testing.tracking_planted import tracking_clip, tracking_pipeline

    pipe = tracking_pipeline()
    return pipe, tracking_clip(pipe.vidinterp_tracking)


def cell_centres(cells: np.ndarray, cell: int) -> np.ndarray:
    return np.stack([(cells[:, 1] + 0.5) * cell, (cells[:, 0] + 0.5) * cell], axis=-1)


def test_planted_tracks_recover_the_known_displacement_exactly(planted):
    pipe, clip = planted
    design = pipe.vidinterp_tracking
    points = cell_centres(clip.cells, design.token_cell)
    # default layer and step: no reference layer 17 in three blocks, so the middle layer (the
    # planted one) at the last step
    tracks = vidinterp.track(pipe, video=clip.frames, points=points, num_inference_steps=design.num_inference_steps,
                             occlusion_threshold=0.3)
    assert (tracks.attrs["layer"], tracks.attrs["step"]) == (design.correspondence_layer, design.step)
    assert tracks["tracks"].dims == ("point", "frame", "xy")
    np.testing.assert_array_equal(tracks["tracks"].values, clip.tracks)  # every pixel frame, exactly
    moved = tracks["tracks"].values[:, -1] - tracks["tracks"].values[:, 0]
    np.testing.assert_array_equal(moved, np.tile(np.array(clip.tracks[0, -1] - clip.tracks[0, 0]), (6, 1)))
    assert (tracks["confidence"].values > 0.5).all() and not tracks["occluded"].values.any()
    np.testing.assert_array_equal(tracks["token_frame"].values, clip.token_frame)
    assert tracks["video"].shape == clip.frames.shape

    # queries at a later pixel frame: the reference is that frame's token frame, tracks run both ways
    later = 6  # token frame 2
    tracks = vidinterp.track(pipe, video=clip.frames, points=clip.tracks[:, later], query_frames=later,
                             layer=design.correspondence_layer, step=design.step,
                             num_inference_steps=design.num_inference_steps)
    np.testing.assert_array_equal(tracks["tracks"].values, clip.tracks)

    # a layer that only keeps positions does not track the patch
    still = vidinterp.track(pipe, video=clip.frames, points=points, layer=design.positional_layer, step=design.step,
                            num_inference_steps=design.num_inference_steps)
    assert (still["tracks"].values == points[:, None, :]).all()


def test_planted_interpolated_tracks(planted):
    pipe, clip = planted
    design = pipe.vidinterp_tracking
    points = cell_centres(clip.cells, design.token_cell)
    tracks = vidinterp.track(pipe, video=clip.frames, points=points, temporal="interpolate",
                             num_inference_steps=design.num_inference_steps)["tracks"].values
    np.testing.assert_array_equal(tracks[:, 0], points)
    np.testing.assert_array_equal(tracks[:, 11:], clip.tracks[:, 11:])  # after the last anchor (10.5): held
    # between the anchors of token frames 1 (pixel 2.5) and 2 (pixel 6.5), linear
    expected = clip.tracks[:, 4] + (clip.tracks[:, 5] - clip.tracks[:, 4]) * (4 - 2.5) / 4.0
    np.testing.assert_allclose(tracks[:, 4], expected)


# -------------------------------------------------------------------- tiny pipelines of three families
@pytest.mark.parametrize("family", ["cogvideox", "hunyuan_video", "wan"])
def test_tracks_on_tiny_pipelines(family):
    from vidinterp.registry import adapter_for
    from vidinterp.testing import tiny_pipeline

    pipe = tiny_pipeline(family)
    frames, height, width = adapter_for(pipe).default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    tracks = vidinterp.track(pipe, video=video, num_inference_steps=3)  # every token cell of frame 0
    layout = adapter_for(pipe).layout_for(frames, height, width)
    assert tracks["tracks"].shape == (layout.height * layout.width, frames, 2)
    values = tracks["tracks"].values
    assert np.isfinite(values).all() and (values >= 0).all()
    assert (values[..., 0] <= width).all() and (values[..., 1] <= height).all()
    assert tracks.attrs["step"] == 2 and tracks.attrs["family"] == family
    confidence = tracks["confidence"].values
    assert ((confidence > 0) & (confidence <= 1 + 1e-6)).all() and (confidence[:, 0] == 1).all()


def test_tracks_while_generating():
    from vidinterp.testing import tiny_pipeline

    pipe = tiny_pipeline("cogvideox")
    tracks, trace = vidinterp.track(pipe, prompt="a red dog", points=[[4.0, 4.0], [40.0, 20.0]], num_inference_steps=3,
                                    return_trace=True)
    assert trace.attrs["mode"] == "generation" and trace.attrs["analysed_steps"] == [2]
    assert tracks["tracks"].shape == (2, 9, 2) and tracks["video"].shape == (9, 32, 48, 3)
    with pytest.raises(ValueError, match="a video to renoise or a prompt"):
        vidinterp.track(pipe)
    with pytest.raises(ValueError, match="outside"):
        vidinterp.track(pipe, prompt="a dog", points=[[48.0, 4.0]], num_inference_steps=2)


# -------------------------------------------------------------------- plot and command line
def test_plot_tracks(planted):
    from vidinterp.plotting import plot_tracks

    pipe, clip = planted
    design = pipe.vidinterp_tracking
    tracks = vidinterp.track(pipe, video=clip.frames, points=cell_centres(clip.cells, design.token_cell)[:2],
                             num_inference_steps=design.num_inference_steps, occlusion_threshold=0.99)
    figure = plot_tracks(tracks, trail=3)
    assert len(figure.frames) == clip.frames.shape[0]
    markers = figure.frames[5].data[-1]
    np.testing.assert_allclose(np.stack([markers.x, markers.y], -1), clip.tracks[:2, 5])
    assert set(markers.marker.symbol) == {"circle-open"}  # confidence below 0.99 away from the reference
    with pytest.raises(ValueError, match="tracks"):
        plot_tracks(tracks.drop_vars("tracks"))


def test_track_command(tmp_path, capsys):
    import xarray as xr

    from vidinterp.cli import main

    out = tmp_path / "out"
    assert main(["track", "--model", "tiny-cogvideox", "--steps", "2", "--points", "4,4", "20.5,12",
                 "--out", str(out)]) == 0
    tracks = xr.load_dataset(out / "tracks.nc", engine="h5netcdf")
    assert tracks["tracks"].shape == (2, 9, 2) and tracks.attrs["step"] == 1
    assert (out / "tracks.html").stat().st_size > 0
    assert main(["track", "--model", "tiny-cogvideox", "--steps", "2", "--out", str(tmp_path / "demo")]) == 0
    assert "PCK@8px" in capsys.readouterr().out
    assert main(["track", "--model", "tiny-cogvideox", "--points", "4;4", "--out", str(out)]) == 2
    assert "--points takes X,Y" in capsys.readouterr().err


def test_track_command_default_runs_on_the_bundled_model(tmp_path, capsys):
    """``vidinterp track`` with no arguments: the shipped shapes model on its demo clip, prompted
    with the clip's caption (the model knows only its own vocabulary)."""
    from vidinterp.cli import main

    assert main(["track", "--out", str(tmp_path)]) == 0
    assert "PCK@8px" in capsys.readouterr().out
    assert (tmp_path / "tracks.nc").exists()
