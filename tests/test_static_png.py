"""Static PNGs of plotly figures (vidinterp.plotting.static): pixels in the right place, without
kaleido or a browser; the notebook bundle carries the interactive figure and the PNG."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots
from PIL import Image

from vidinterp.plotting.static import PLOTLY_MIMETYPE, FigureBundle, plotly_array, to_png
from vidinterp.plotting import compact_figure

WIDTH, HEIGHT = 400, 300
# No margins: data coordinates map straight onto image pixels.
BARE = {"margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "width": WIDTH, "height": HEIGHT, "plot_bgcolor": "white"}


def pixels(figure: go.Figure, **size) -> np.ndarray:
    png = to_png(figure, **size)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def close(colour, expected, tolerance=12) -> bool:
    return bool(np.abs(np.asarray(colour) - np.asarray(expected)).max() <= tolerance)


def test_heatmap_pattern_lands_in_the_right_quadrants():
    """z = [[0, 1], [1, 0]] on a 2x2 grid: row 0 is at the bottom (plotly's y grows upwards)."""
    figure = go.Figure(go.Heatmap(z=[[0.0, 1.0], [1.0, 0.0]], colorscale=[[0, "#0000ff"], [1, "#ff0000"]],
                                  zmin=0, zmax=1, showscale=False), layout=BARE)
    figure.update_xaxes(range=[-0.5, 1.5])
    figure.update_yaxes(range=[-0.5, 1.5])
    image = pixels(figure)
    blue, red = (0, 0, 255), (255, 0, 0)
    assert close(image[3 * HEIGHT // 4, WIDTH // 4], blue)   # bottom left: z[0][0] = 0
    assert close(image[3 * HEIGHT // 4, 3 * WIDTH // 4], red)  # bottom right: z[0][1] = 1
    assert close(image[HEIGHT // 4, WIDTH // 4], red)          # top left: z[1][0] = 1
    assert close(image[HEIGHT // 4, 3 * WIDTH // 4], blue)


def test_reversed_y_axis_and_zmax_and_opacity():
    """autorange='reversed' puts row 0 at the top; values above zmax take the top colour; an
    opacity of 0.5 blends with the white background."""
    figure = go.Figure(go.Heatmap(z=[[5.0, 5.0], [0.0, 0.0]], colorscale=[[0, "#000000"], [1, "#ff0000"]], zmin=0,
                                  zmax=1, opacity=0.5, showscale=False), layout=BARE)
    figure.update_xaxes(range=[-0.5, 1.5])
    figure.update_yaxes(autorange="reversed")
    image = pixels(figure)
    assert close(image[HEIGHT // 4, WIDTH // 2], (255, 128, 128))   # top: red at half opacity over white
    assert close(image[3 * HEIGHT // 4, WIDTH // 2], (128, 128, 128))  # bottom: black at half opacity


def test_image_trace_draws_its_pixels_from_z_and_from_a_png_source():
    picture = np.zeros((30, 40, 3), np.uint8)
    picture[:15, :20] = (255, 0, 0)      # top-left quadrant red
    picture[15:, 20:] = (0, 200, 0)      # bottom-right quadrant green
    figure = go.Figure(go.Image(z=picture), layout=BARE)
    for drawn in (figure, compact_figure(figure)):  # compact: the same image as a PNG data URI in `source`
        image = pixels(drawn)
        assert close(image[HEIGHT // 4, WIDTH // 4], (255, 0, 0))
        assert close(image[3 * HEIGHT // 4, 3 * WIDTH // 4], (0, 200, 0))
        assert close(image[HEIGHT // 4, 3 * WIDTH // 4], (0, 0, 0))
    assert compact_figure(figure).data[0].source.startswith("data:image/png;base64,")


@pytest.mark.parametrize("kind", [go.Scatter, go.Scattergl])
def test_scatter_marker_is_drawn_where_its_coordinates_say(kind):
    figure = go.Figure(kind(x=[2.5], y=[7.5], mode="markers", marker={"color": "#00ff00", "size": 20}),
                       layout=BARE)
    figure.update_xaxes(range=[0, 10])
    figure.update_yaxes(range=[0, 10])
    image = pixels(figure)
    row, column = int(HEIGHT * (1 - 0.75)), int(WIDTH * 0.25)
    assert close(image[row, column], (0, 255, 0))
    green = np.all(np.abs(image - (0, 255, 0)) <= 12, axis=-1)
    rows, columns = np.nonzero(green)
    assert abs(rows.mean() - row) <= 2 and abs(columns.mean() - column) <= 2 and 50 < green.sum() < 600


def test_numeric_marker_colours_go_through_the_marker_colour_scale():
    """Markers coloured by value (PaCMAP points by frame): cmin maps to the scale's first colour,
    cmax to its last."""
    figure = go.Figure(go.Scattergl(x=[2.5, 7.5], y=[5, 5], mode="markers", marker={
        "color": np.array([0, 4]), "cmin": 0, "cmax": 4, "size": 20,
        "colorscale": [[0, "#ff0000"], [1, "#0000ff"]]}), layout=BARE)
    figure.update_xaxes(range=[0, 10])
    figure.update_yaxes(range=[0, 10])
    image = pixels(figure)
    row = int(HEIGHT * 0.5)
    assert close(image[row, int(WIDTH * 0.25)], (255, 0, 0)) and close(image[row, int(WIDTH * 0.75)], (0, 0, 255))


def test_subplot_domains_shapes_and_titles():
    """Two side-by-side subplots: each heatmap lands in its own half; a paper-coordinate line
    shape and the subplot titles are drawn (dark pixels in the title band)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=["left", "right"], horizontal_spacing=0.0)
    figure.add_trace(go.Heatmap(z=[[1.0]], colorscale=[[0, "#0000ff"], [1, "#0000ff"]], showscale=False), 1, 1)
    figure.add_trace(go.Heatmap(z=[[1.0]], colorscale=[[0, "#ffff00"], [1, "#ffff00"]], showscale=False), 1, 2)
    figure.add_shape(type="line", xref="paper", yref="paper", x0=0, x1=1, y0=0.5, y1=0.5,
                     line={"color": "#ff00ff", "width": 4})
    figure.update_layout(width=WIDTH, height=HEIGHT, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    image = pixels(figure)
    assert close(image[80, WIDTH // 4], (0, 0, 255)) and close(image[80, 3 * WIDTH // 4], (255, 255, 0))
    middle = 40 + (HEIGHT - 40) // 2
    assert any(close(image[middle + offset, WIDTH // 4], (255, 0, 255), 30) for offset in (-1, 0, 1))
    assert (image[:40].sum(axis=-1) < 300).sum() > 20  # title text


def test_animated_figure_is_drawn_at_its_initial_data():
    figure = go.Figure(go.Heatmap(z=[[0.0]], colorscale=[[0, "#0000ff"], [1, "#ff0000"]], zmin=0, zmax=1,
                                  showscale=False), layout=BARE,
                       frames=[go.Frame(data=[go.Heatmap(z=[[1.0]])], name="1")])
    assert close(pixels(figure)[HEIGHT // 2, WIDTH // 2], (0, 0, 255))


def test_size_defaults_to_the_layout_and_can_be_given():
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]), layout={"width": 321, "height": 123})
    assert pixels(figure).shape == (123, 321, 3)
    assert pixels(figure, width=200, height=100).shape == (100, 200, 3)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="plotly.graph_objects.Figure, got dict"):
        to_png({"data": []})
    with pytest.raises(ValueError, match=r"cannot draw trace types \['surface'\]"):
        to_png(go.Figure(go.Surface(z=[[1, 2], [3, 4]])))
    with pytest.raises(ValueError, match="at least 10x10 pixels"):
        to_png(go.Figure(), width=5, height=100)


def test_mimebundle_has_the_interactive_figure_and_the_png():
    figure = go.Figure(go.Heatmap(z=[[0.0, 1.0]]), layout={"title": {"text": "a map"}, "width": 200, "height": 150})
    bundle = FigureBundle(figure)._repr_mimebundle_()
    assert set(bundle) == {PLOTLY_MIMETYPE, "image/png", "text/plain"}
    plotly_json = bundle[PLOTLY_MIMETYPE]
    json.dumps(plotly_json)  # JSON-serialisable as notebooks store it
    assert plotly_json["data"][0]["type"] == "heatmap" and plotly_json["layout"]["title"]["text"] == "a map"
    assert plotly_array(plotly_json["data"][0]["z"]).tolist() == [[0.0, 1.0]]
    png = base64.b64decode(bundle["image/png"])
    assert Image.open(io.BytesIO(png)).size == (200, 150)
    assert "a map" in bundle["text/plain"]


def test_every_default_figure_of_a_real_trace_renders():
    """Maps, lambda2 (box, threshold line), separation (heatmaps, markers), QK peaks (images,
    markers): each gives a PNG of the layout's size that is not blank."""
    import vidinterp
    import vidinterp.testing
    from vidinterp.registry import analysis_classes
    from vidinterp.report import default_figures

    classes = analysis_classes()
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    trace = vidinterp.trace(pipe, prompt="a dog on grass", concepts=["dog", "grass"], num_inference_steps=2,
                            analyses=[classes[name]() for name in ("imap", "lambda2", "qk_matching", "separation")])
    figures = default_figures(trace)
    assert {"maps", "lambda2", "separation", "qk_peaks"} <= set(figures)
    for name, figure in figures.items():
        image = pixels(figure)
        assert image.shape == (figure.layout.height, figure.layout.width, 3), name
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20, f"{name} looks blank"
