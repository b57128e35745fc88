"""Figures of traces (vidinterp.plotting, docs/figures.md), each built on a real trace and checked
for its key content against values recomputed here with numpy/scipy: overlay values under each
scaling mode and interpolation, pixel-frame -> latent-frame labels, QK markers at token-cell
centres, the lambda2 threshold at the calibrated value and the selected layers, the selected
heads where the Dataset says, correlations equal to scipy's, a colour bar, and no auto-play.

Two traces, built once per module: the planted CogVideoX (9 pixel frames in 3 latent frames
0 | 1-4 | 5-8, 8x8-pixel token cells, known localising head) and the shipped shapes model on its
demo clip (a lambda2 calibration with a threshold; exact masks for per-head localisation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import vidinterp
from vidinterp.plotting import (
    DEFAULT_COLORSCALE,
    DEFAULT_OPACITY,
    VideoFigure,
    head_localisation,
    plot_lambda2,
    plot_maps,
    plot_tracks,
    stack_head_maps,
)

METHODS = ["cross_attention", "gramcol", "imap"]


@pytest.fixture(scope="module")
def planted():
    from vidinterp.analyses.cross_attention import CrossAttention
    from vidinterp.analyses.gramcol import GramCol
    from vidinterp.analyses.imap import IMAP
    from vidinterp.analyses.lambda2 import Lambda2
    from vidinterp.analyses.qk_matching import QKMatching
    from vidinterp.analyses.separation import Separation
    from vidinterp.testing import planted_pipeline, planted_trace

    pipe = planted_pipeline("cogvideox")
    trace, clip = planted_trace(pipe, analyses=[CrossAttention(), GramCol(), IMAP(k=2), Separation(),
                                                Lambda2(method="dense"), QKMatching()])
    return trace, clip, pipe.vidinterp_planted


@pytest.fixture(scope="module")
def shapes():
    from vidinterp.analyses.imap import IMAP
    from vidinterp.analyses.lambda2 import Lambda2
    from vidinterp.analyses.separation import Separation
    from vidinterp.datasets.shapes import load_clip
    from vidinterp.plotting import head_map_analyses

    pipe = vidinterp.zoo.load("shapes")
    clip = load_clip(vidinterp.zoo.demo_clip("shapes"))
    config = pipe.shapes_config
    analyses = [IMAP(k=2), Separation(), Lambda2()] + head_map_analyses(range(config.num_layers),
                                                                         range(config.num_heads))
    trace = vidinterp.trace(pipe, video=clip.frames, prompt=clip.caption, concepts=clip.concepts, analyses=analyses)
    masks = np.stack([clip.concept_mask(word) for word in clip.concepts])
    return trace, pipe.vidinterp_calibration, masks


def cogvideox_latent(pixel: int) -> int:
    """CogVideoX's causal VAE (temporal compression 4): pixel frame 0 -> 0, 4f-3..4f -> f."""
    return 0 if pixel == 0 else (pixel + 3) // 4


def overlay(figure, pixel: int, panel: int, with_video: bool = True):
    """The heatmap of subplot ``panel`` (row-major) in animation frame ``pixel``."""
    per_panel = 2 if with_video else 1
    return figure.frames[pixel].data[panel * per_panel + per_panel - 1]


# ------------------------------------------------------------------ overlays
def test_overlay_frames_are_pixel_frames_labelled_with_their_latent_frame(planted):
    trace, clip, _ = planted
    figure = trace.plot(methods=METHODS)
    steps = figure.layout.sliders[0].steps
    assert len(figure.frames) == len(steps) == trace.video.shape[0] == 9
    assert [step.label for step in steps] == [f"px {p} · latent {cogvideox_latent(p)}" for p in range(9)]
    assert [list(step.args[0]) for step in steps] == [[frame.name] for frame in figure.frames]
    for pixel in (0, 4, 5, 8):  # the video frame is that pixel frame, the map its latent frame's
        image = figure.frames[pixel].data[0]
        np.testing.assert_array_equal(image.z, trace.video[pixel])
        expected = trace.maps["gramcol"].sel(concept="red").isel(frame=cogvideox_latent(pixel)).values
        low, high = expected.min(), expected.max()
        np.testing.assert_allclose(overlay(figure, pixel, 1).z, (expected - low) / (high - low), rtol=1e-6)


@pytest.mark.parametrize("scale", ["frame", "concept", "global"])
def test_overlay_values_are_the_upsampled_map_under_each_scaling(planted, scale):
    trace, _, _ = planted
    figure = trace.plot(methods=METHODS, scale=scale)
    values = trace.maps["imap"].values.astype(np.float64)  # [concept, frame, y, x]
    concept, latent, pixel = 1, 2, 6  # "blue", pixel frame 6 lies in latent frame 2
    group = {"frame": values[concept, latent], "concept": values[concept], "global": values}[scale]
    low, high = group.min(), group.max()
    heatmap = overlay(figure, pixel, panel=concept * len(METHODS) + 2)  # row "blue", column "imap"
    # nearest: one brick per 8x8 token cell; the brick over pixel (row 21, column 37) is cell (2, 4)
    assert (heatmap.x0, heatmap.dx, heatmap.y0, heatmap.dy) == (4, 8, 4, 8)
    row, column = 21, 37
    cell_y = int((row - (heatmap.y0 - heatmap.dy / 2)) // heatmap.dy)
    cell_x = int((column - (heatmap.x0 - heatmap.dx / 2)) // heatmap.dx)
    upsampled = values[concept, latent].repeat(8, axis=0).repeat(8, axis=1)  # nearest, by hand
    assert heatmap.z[cell_y][cell_x] == pytest.approx((upsampled[row, column] - low) / (high - low), rel=1e-6)
    assert (heatmap.zmin, heatmap.zmax) == (0, 1)
    assert np.nanmin(heatmap.z) >= 0 and np.nanmax(heatmap.z) <= 1


def test_bilinear_overlay_interpolates_between_cell_centres(planted):
    trace, _, _ = planted
    figure = trace.plot(methods=["gramcol"], concepts=["red"], interpolation="bilinear", scale="global")
    heatmap = overlay(figure, 3, 0)
    assert np.shape(heatmap.z) == (48, 64) and (heatmap.x0, heatmap.dx) == (0.5, 1)
    values = trace.maps["gramcol"].sel(concept="red").values.astype(np.float64)
    scaled = (values[1] - values.min()) / (values.max() - values.min())  # pixel frame 3 -> latent frame 1

    def source(pixel: int, size: int) -> tuple[int, int, float]:  # half-pixel centres, clamped
        position = min(max((pixel + 0.5) / 8 - 0.5, 0.0), size - 1)
        below = int(np.floor(position))
        return below, min(below + 1, size - 1), position - below

    for row, column in [(21, 37), (0, 0), (47, 63), (10, 30)]:
        y0, y1, wy = source(row, 6)
        x0, x1, wx = source(column, 8)
        expected = ((1 - wy) * ((1 - wx) * scaled[y0, x0] + wx * scaled[y0, x1])
                    + wy * ((1 - wx) * scaled[y1, x0] + wx * scaled[y1, x1]))
        assert heatmap.z[row][column] == pytest.approx(expected, abs=1e-5)


def test_overlay_has_one_colour_bar_the_default_style_and_no_auto_play(planted, tmp_path):
    trace, _, _ = planted
    figure = trace.plot(methods=METHODS)
    assert isinstance(figure, VideoFigure)
    heatmaps = [trace_ for trace_ in figure.data if trace_.type == "heatmap"]
    assert len(heatmaps) == 2 * len(METHODS)
    assert [heatmap.showscale for heatmap in heatmaps] == [True] + [False] * (len(heatmaps) - 1)
    assert "per frame" in heatmaps[0].colorbar.title.text
    assert {heatmap.colorscale for heatmap in heatmaps} == {figure.data[1].colorscale}
    assert DEFAULT_COLORSCALE == "Viridis" and DEFAULT_OPACITY == 0.5
    assert {heatmap.opacity for heatmap in heatmaps} == {DEFAULT_OPACITY}
    assert plot_maps(trace.maps, trace.video, opacity=0.2).data[1].opacity == 0.2
    # a play button that starts nothing by itself: the HTML never calls Plotly.animate on load
    buttons = figure.layout.updatemenus[0].buttons
    assert [button.label for button in buttons] == ["play", "pause"]
    figure.write_html(tmp_path / "maps.html", include_plotlyjs=False)
    assert "Plotly.addFrames" in (tmp_path / "maps.html").read_text()
    assert "Plotly.animate(" not in (tmp_path / "maps.html").read_text()
    assert "Plotly.animate(" not in figure.to_html(include_plotlyjs=False)
    import plotly.graph_objects as go

    assert "Plotly.animate(" in go.Figure(figure).to_html(include_plotlyjs=False)  # plotly's own default


def test_overlay_without_video_and_of_a_user_map(planted):
    trace, _, _ = planted
    user = (trace.maps["gramcol"] * -1).rename("my_analysis")  # any (concept, frame, y, x) variable
    figure = plot_maps(trace.maps.assign(my_analysis=user), methods=["gramcol", "my_analysis"])
    assert [title.text for title in figure.layout.annotations][:2] == ["gramcol · red", "my_analysis · red"]
    assert all(trace_.type == "heatmap" and trace_.opacity == 1.0 for trace_ in figure.data)
    assert len(figure.frames) == 9  # the pixel frames the spans cover
    np.testing.assert_allclose(figure.frames[2].data[1].z, 1 - np.asarray(figure.frames[2].data[0].z), atol=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"scale": "video"}, "scale must be one of"),
    ({"interpolation": "cubic"}, "interpolation must be one of"),
    ({"opacity": 1.5}, "opacity must be in"),
    ({"methods": ["imapp"]}, "no map 'imapp'"),
    ({"concepts": ["green"]}, "unknown concepts"),
])
def test_overlay_bad_input_names_the_problem(planted, options, message):
    trace, _, _ = planted
    with pytest.raises(ValueError, match=message):
        trace.plot(**options)


def test_overlay_refuses_a_video_of_another_size(planted):
    trace, _, _ = planted
    with pytest.raises(ValueError, match="video frames are 48x32 pixels; the maps cover 48x64"):
        trace.plot(video=trace.video[:, :, :32])
    with pytest.raises(ValueError, match="video must be uint8"):
        trace.plot(video=trace.video.astype(np.float32))


# ------------------------------------------------------------------ QK peaks
def test_qk_markers_sit_at_the_surrogate_cell_centres(planted):
    from vidinterp.testing.planted import planted_token_masks

    trace, clip, design = planted
    figure = trace.plot_qk_peaks()
    assert isinstance(figure, VideoFigure) and len(figure.frames) == 9
    assert [step.label for step in figure.layout.sliders[0].steps][5] == "px 5 · latent 2"
    surrogate_y = trace.diagnostics["surrogate_y"].isel(step=-1).transpose("concept", "frame", "layer", "head").values
    surrogate_x = trace.diagnostics["surrogate_x"].isel(step=-1).transpose("concept", "frame", "layer", "head").values
    red_mask = planted_token_masks(clip, design)["red"]
    layer, head = design.localising
    for pixel in (0, 3, 6):
        latent = cogvideox_latent(pixel)
        markers = figure.frames[pixel].data[1]  # panel "red": [video, markers]
        np.testing.assert_array_equal(markers.x, (surrogate_x[0, latent].ravel() + 0.5) * 8)
        np.testing.assert_array_equal(markers.y, (surrogate_y[0, latent].ravel() + 0.5) * 8)
        # the planted localising head's marker lies on the red object's token cells
        index = layer * surrogate_x.shape[3] + head
        assert tuple(markers.customdata[index][:2]) == (layer, head)
        assert red_mask[latent, int(markers.y[index] // 8), int(markers.x[index] // 8)]
    assert "Plotly.animate(" not in figure.to_html(include_plotlyjs=False)


def test_qk_peaks_read_the_token_grid_the_analysis_recorded(planted, tmp_path):
    from vidinterp.plotting import plot_qk_peaks

    trace, _, _ = planted
    recorded = plot_qk_peaks(trace.diagnostics, trace.video)  # grid attrs on surrogate_y: 8 px per token
    from_maps = plot_qk_peaks(trace.diagnostics, trace.video, grid=trace.maps)
    np.testing.assert_array_equal(recorded.frames[4].data[1].x, from_maps.frames[4].data[1].x)
    loaded = vidinterp.Trace.load(trace.save(tmp_path / "trace.nc"))  # the attrs survive a file
    np.testing.assert_array_equal(loaded.plot_qk_peaks().frames[4].data[1].y, from_maps.frames[4].data[1].y)
    older = trace.diagnostics.copy(deep=True)
    older["surrogate_y"].attrs = {}  # a file from before the attrs: the grid must be given
    with pytest.raises(ValueError, match="grid=trace.maps"):
        plot_qk_peaks(older, trace.video)
    with pytest.raises(ValueError, match="unknown layers"):
        trace.plot_qk_peaks(layers=[7])


# ------------------------------------------------------------------ lambda2
def test_lambda2_threshold_line_at_the_calibrated_value_and_selected_layers(shapes):
    trace, calibration, _ = shapes
    stored = json.loads((vidinterp.zoo.weights_path("shapes").with_suffix(".lambda2.json")).read_text())
    threshold = stored["threshold"]
    expected = sorted(int(layer) for layer, score in stored["scores"].items() if score > threshold)
    figure = trace.plot_lambda2(calibration=calibration)
    lines = [shape for shape in figure.layout.shapes if shape.type == "line"]
    assert len(lines) == 1 and lines[0].y0 == lines[0].y1 == threshold
    marked = next(trace_ for trace_ in figure.data if trace_.name == "selected layers")
    assert list(marked.x) == expected == [0, 2]
    per_head = trace.layers["lambda2"].mean("step").values  # [layer, head]
    box = next(trace_ for trace_ in figure.data if trace_.name == "heads")
    np.testing.assert_allclose(box.y, per_head.ravel(), rtol=1e-6)
    np.testing.assert_array_equal(box.x, np.repeat(np.arange(4), per_head.shape[1]))
    mean = next(trace_ for trace_ in figure.data if trace_.name == "layer mean")
    np.testing.assert_allclose(mean.y, per_head.mean(axis=1), rtol=1e-6)
    # the same from the JSON file; a given threshold wins
    assert plot_lambda2(trace.layers, calibration=vidinterp.zoo.weights_path("shapes").with_suffix(".lambda2.json")
                        ).layout.shapes[-1].y0 == threshold
    assert plot_lambda2(trace.layers, threshold=0.8, calibration=calibration).data[-1].x == (0,)
    # without calibration=, the one the trace recorded (the pipeline's) gives the same line and layers
    recorded = trace.plot_lambda2()
    assert recorded.layout.shapes[-1].y0 == threshold and list(recorded.data[-1].x) == expected


def test_lambda2_without_calibration_uses_the_paper_value_and_the_traced_scores(planted):
    trace, _, design = planted
    figure = trace.plot_lambda2()
    assert figure.layout.shapes[-1].y0 == 0.7  # CogVideoX, IMAP paper
    assert any("paper value for cogvideox" in annotation.text for annotation in figure.layout.annotations)
    # planted: the identity layer scores |lambda2| ~ 1, the uniform layer 0
    assert list(figure.data[-1].x) == [design.identity_layer]
    with pytest.raises(ValueError, match="Lambda2"):
        plot_lambda2(trace.heads)


def test_lambda2_over_steps_one_line_per_layer(shapes):
    trace, calibration, _ = shapes
    figure = trace.plot_lambda2_steps(calibration=calibration)
    values = trace.layers["lambda2"]
    assert [trace_.name for trace_ in figure.data] == [f"layer {layer}" for layer in range(4)]
    for layer, line in enumerate(figure.data):
        np.testing.assert_array_equal(line.x, values.step.values)
        np.testing.assert_allclose(line.y, values.isel(layer=layer).mean("head").values, rtol=1e-6)
        assert line.line.dash == ("solid" if layer in (0, 2) else "dot")
    assert figure.layout.shapes[0].y0 == calibration["lambda2_threshold"]


# ------------------------------------------------------------------ separation and heads
def test_separation_panels_with_the_selected_heads_where_the_dataset_says(shapes):
    trace, _, _ = shapes
    figure = trace.plot_separation()
    heatmaps = [trace_ for trace_ in figure.data if trace_.type == "heatmap"]
    names = ["chi", "davies_bouldin", "silhouette", "fisher"]
    assert [annotation.text.split(" ")[0] for annotation in figure.layout.annotations] == names
    selected = trace.heads["imap_selected_heads"].isel(step=0).values == 1  # NaN: layer not visited
    expected = {(int(head), int(layer)) for layer, head in zip(*np.nonzero(selected))}
    assert len(expected) == 2 * 2  # IMAP(k=2) in the two calibrated layers
    for name, heatmap, marks in zip(names, heatmaps, [t for t in figure.data if t.name == "selected"]):
        np.testing.assert_allclose(heatmap.z, trace.heads[f"separation_{name}"].mean("step").values, rtol=1e-6)
        assert {(int(x), int(y)) for x, y in zip(marks.x, marks.y)} == expected
        assert heatmap.reversescale == (name == "davies_bouldin")
    assert len(plot_separation_panels := trace.plot_separation(["chi"], selected=None).data) == 1
    assert plot_separation_panels[0].type == "heatmap"
    with pytest.raises(ValueError, match="no selection 'chosen'"):
        trace.plot_separation(selected="chosen")
    with pytest.raises(ValueError, match="no score 'entropy'"):
        trace.plot_separation(["entropy"])


def test_head_scatter_correlations_equal_scipy(shapes):
    trace, _, masks = shapes
    localisation = head_localisation(stack_head_maps(trace.maps), masks)
    # one head by hand: nearest upsampling, min-max, > mean, IoU, averaged over non-empty masks
    one = trace.maps["head_1_2"].values  # [concept, frame, y, x], one latent frame per pixel frame
    ious = []
    for concept in range(masks.shape[0]):
        for frame in range(masks.shape[1]):
            if masks[concept, frame].any():
                pixels = one[concept, frame].repeat(4, axis=0).repeat(4, axis=1)
                normalised = (pixels - pixels.min()) / (pixels.max() - pixels.min())
                predicted = normalised > normalised.mean()
                truth = masks[concept, frame]
                ious.append((predicted & truth).sum() / (predicted | truth).sum())
    assert localisation.sel(layer=1, head=2).item() == pytest.approx(np.mean(ious))

    figure = trace.plot_head_scatter(masks=masks)
    chi = trace.heads["separation_chi"].mean("step").values.ravel()
    located = localisation.values.ravel()
    assert figure.layout.meta["pearson"] == pytest.approx(stats.pearsonr(chi, located)[0])
    assert figure.layout.meta["spearman"] == pytest.approx(stats.spearmanr(chi, located)[0])
    assert figure.layout.meta["heads"] == 16
    assert f"Pearson r = {stats.pearsonr(chi, located)[0]:.3f}" in figure.layout.title.text
    points = sorted((x, y) for trace_ in figure.data for x, y in zip(trace_.x, trace_.y))
    assert points == pytest.approx(sorted(zip(chi, located)))
    with pytest.raises(ValueError, match="exactly one of"):
        trace.plot_head_scatter()
    with pytest.raises(ValueError, match="masks must be bool"):
        head_localisation(stack_head_maps(trace.maps), masks[:2])


# ------------------------------------------------------------------ tracks
def test_tracks_follow_the_overlay_conventions():
    from vidinterp.testing.tracking_planted import tracking_clip, tracking_pipeline

    pipe = tracking_pipeline()
    design = pipe.vidinterp_tracking
    clip = tracking_clip(design)
    cell = design.token_cell
    points = np.stack([(clip.cells[:1, 1] + 0.5) * cell, (clip.cells[:1, 0] + 0.5) * cell], axis=-1)
    tracks = vidinterp.track(pipe, video=clip.frames, points=points, num_inference_steps=design.num_inference_steps)
    figure = plot_tracks(tracks)
    assert isinstance(figure, VideoFigure)
    token = tracks["token_frame"].values
    assert [step.label for step in figure.layout.sliders[0].steps] == [f"px {t} · latent {int(token[t])}"
                                                                       for t in range(len(token))]
    assert (figure.data[0].x0, figure.data[0].dx) == (0.5, 1)  # pixel c drawn over [c, c + 1), as the overlays
    assert "Plotly.animate(" not in figure.to_html(include_plotlyjs=False)
    assert isinstance(tracks, xr.Dataset)


def test_large_frames_are_drawn_from_block_means_at_their_full_size_coordinates():
    from vidinterp.plotting.animation import frame_image

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 720, 3), dtype=np.uint8)
    image = frame_image(frame)  # stride ceil(720 / 256) = 3
    assert (image.dx, image.dy, image.x0, image.y0) == (3, 3, 1.5, 1.5)
    assert np.asarray(image.z).shape == (160, 240, 3)
    np.testing.assert_array_equal(np.asarray(image.z)[7, 11], frame[21:24, 33:36].mean(axis=(0, 1)).round())
    small = frame[:32, :48]
    assert (frame_image(small).dx, np.asarray(frame_image(small).z).shape) == (1, (32, 48, 3))
    # an edge block repeats the last pixels: 100 px at stride 2 (max side 50) ends on pixel 99
    assert np.asarray(frame_image(frame[:100, :99], max_side=50).z).shape == (50, 50, 3)
