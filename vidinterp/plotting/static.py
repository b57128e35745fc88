"""Static PNG images of plotly figures without kaleido or a browser, drawn with matplotlib, and a
notebook display object that carries both the interactive figure and its PNG.

:func:`to_png` draws what vidinterp's figures use: ``go.Image`` (``z`` pixels or a ``source``
data URI), ``go.Heatmap`` (colour scale, ``zmin``/``zmax``, opacity, ``x0``/``dx`` or ``x``
centres, colour bar), ``go.Scatter`` and ``go.Scattergl`` (markers, open symbols, lines, text), ``go.Bar`` and
``go.Box``; layout shapes (lines, rectangles, circles) and annotations (subplot titles) in axis,
axis-domain or paper coordinates; subplot domains; axis ranges, reversed axes and
``scaleanchor`` (equal aspect); the layout title. An animated figure is drawn at its initial
data (the first frame). Not drawn: legends, hover text, sliders and buttons, 3-D and map traces
(an unsupported trace type raises ``ValueError`` naming it).

Coordinates follow plotly's: the figure is ``width x height`` screen pixels (default the
layout's, else 700 x 450), the plot area is inside the layout margins, each subplot covers its
axes' ``domain`` of the plot area, and an image's pixel ``(r, c)`` is centred on ``(x0 + c dx,
y0 + r dy)``.

:class:`FigureBundle` (``show(fig)`` in a notebook) puts two outputs in the notebook: the plotly
JSON (``application/vnd.plotly.v1+json``: interactive in JupyterLab, VS Code, nteract) and a PNG
(``image/png``: what GitHub, nbviewer and static exports render). It deliberately adds no
``text/html``: that would embed plotly.js (4.8 MB) in every output, and GitHub shows no scripts.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["to_png", "FigureBundle", "show", "plotly_array", "PLOTLY_MIMETYPE", "DEFAULT_SIZE"]

#: The mimetype of plotly's JSON figure in notebooks.
PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
#: ``(width, height)`` in pixels when neither the call nor the layout gives one (plotly's own default).
DEFAULT_SIZE = (700, 450)
_DPI = 100
_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}
_COLORWAY = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF",
             "#FECB52")
_DEFAULT_COLORSCALE = "Plasma"
_DRAWN = ("image", "heatmap", "scatter", "scattergl", "bar", "box")


def plotly_array(value: Any) -> np.ndarray:
    """A plotly data value as a numpy array: decodes plotly's typed-array form
    (``{"dtype": "f8", "bdata": <base64>, "shape": "8, 8"}``, what ``Figure.to_plotly_json``
    holds for numpy data) and converts lists and tuples."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return array.reshape([int(size) for size in str(shape).split(",")]) if shape else array
    return np.asarray(value)


def to_png(figure: go.Figure, width: int | None = None, height: int | None = None) -> bytes:
    """Render ``figure`` to PNG bytes with matplotlib (no kaleido, no browser).

    Args:
        figure: a plotly figure (animated figures are drawn at their initial data).
        width, height: image size in pixels (default: the layout's, else :data:`DEFAULT_SIZE`).

    Raises:
        TypeError: ``figure`` is not a ``plotly.graph_objects.Figure``.
        ValueError: a size below 10 pixels, or a trace type this renderer does not draw.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(figure, go.Figure):
        raise TypeError(f"to_png takes a plotly.graph_objects.Figure, got {type(figure).__name__}")
    width = int(width or figure.layout.width or DEFAULT_SIZE[0])
    height = int(height or figure.layout.height or DEFAULT_SIZE[1])
    if width < 10 or height < 10:
        raise ValueError(f"the image must be at least 10x10 pixels, got width={width}, height={height}")
    unknown = sorted({trace.type for trace in figure.data} - set(_DRAWN))
    if unknown:
        raise ValueError(f"to_png cannot draw trace types {unknown}; it draws {list(_DRAWN)}")
    canvas_figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI,
                           facecolor=_colour(_layout_value(figure, "paper_bgcolor") or "white"))
    FigureCanvasAgg(canvas_figure)
    _Drawing(figure, canvas_figure, width, height).draw()
    buffer = io.BytesIO()
    canvas_figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


class FigureBundle:
    """A plotly figure for notebooks: displayed as the interactive figure where the front end
    renders plotly's mimetype, and as a static PNG (:func:`to_png`) everywhere else; the
    notebook file keeps both (the interactive one compacted, :func:`compact_figure`).

    >>> FigureBundle(trace.plot())          # last expression of a cell
    """

    def __init__(self, figure: go.Figure, width: int | None = None, height: int | None = None) -> None:
        if not isinstance(figure, go.Figure):
            raise TypeError(f"FigureBundle takes a plotly.graph_objects.Figure, got {type(figure).__name__}")
        self.figure, self.width, self.height = figure, width, height

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        import json

        import plotly.io as pio

        from vidinterp.plotting.compact import compact_figure

        return {
            PLOTLY_MIMETYPE: json.loads(pio.to_json(compact_figure(self.figure), validate=False)),
            "image/png": base64.b64encode(to_png(self.figure, self.width, self.height)).decode("ascii"),
            "text/plain": repr(self),
        }

    def __repr__(self) -> str:
        title = self.figure.layout.title.text
        return f"FigureBundle({title!r}, {len(self.figure.data)} traces, {len(self.figure.frames)} frames)"


def show(figure: go.Figure, width: int | None = None, height: int | None = None) -> None:
    """Display ``figure`` in a notebook as a :class:`FigureBundle` (interactive + PNG).

    Raises:
        ImportError: IPython is not installed (``pip install vidinterp[notebooks]``).
    """
    try:
        from IPython.display import display
    except ImportError as error:
        raise ImportError("show() displays in a notebook and needs IPython: pip install 'vidinterp[notebooks]'") from error
    display(FigureBundle(figure, width, height))


def _layout_value(figure: go.Figure, name: str) -> Any:
    """``figure.layout.<name>``, else the value its template sets."""
    value = getattr(figure.layout, name)
    if value is None and figure.layout.template is not None:
        value = getattr(figure.layout.template.layout, name)
    return value


def _colour(value: Any, alpha: float | None = None) -> tuple[float, float, float, float]:
    """A plotly colour (``#rgb``, ``rgb(...)``, ``rgba(...)``, CSS name) as an RGBA tuple in [0, 1]."""
    from matplotlib.colors import to_rgba

    text = str(value).strip()
    match = re.fullmatch(r"rgba?\(([^)]*)\)", text.replace(" ", ""))
    if match:
        parts = [float(part) for part in match.group(1).split(",")]
        rgba = (parts[0] / 255, parts[1] / 255, parts[2] / 255, parts[3] if len(parts) > 3 else 1.0)
    else:
        rgba = to_rgba(text)
    return rgba if alpha is None else (*rgba[:3], rgba[3] * alpha)


def _text(value: Any) -> str:
    """Plotly's HTML-ish label text as plain text (``<br>`` a new line, other tags dropped)."""
    text = re.sub(r"<br\s*/?>", "\n", str(value or ""), flags=re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _colormap(colorscale: Any, reverse: bool = False):
    """A matplotlib colormap of a plotly colour scale (a name or ``[[position, colour], ...]``)."""
    from matplotlib.colors import LinearSegmentedColormap
    from plotly.colors import get_colorscale

    scale = get_colorscale(colorscale) if isinstance(colorscale, str) else [list(item) for item in colorscale]
    stops = [(float(position), _colour(colour)) for position, colour in scale]
    if reverse:
        stops = [(1 - position, colour) for position, colour in reversed(stops)]
    return LinearSegmentedColormap.from_list("plotly", stops, N=256).with_extremes(bad=(0, 0, 0, 0))


def _image_pixels(trace) -> np.ndarray:
    """``uint8 [height, width, 3|4]`` pixels of a ``go.Image`` (from ``z`` or ``source``)."""
    from PIL import Image

    if trace.source:
        match = re.fullmatch(r"data:image/[a-z+]+;base64,(.*)", trace.source, flags=re.S)
        if not match:
            raise ValueError(f"to_png draws go.Image sources that are base64 data URIs, got {trace.source[:40]!r}...")
        with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as image:
            return np.asarray(image.convert("RGBA"))
    pixels = plotly_array(trace.z).astype(np.float64)
    model = trace.colormodel or ("rgba" if pixels.shape[-1] == 4 else "rgb")
    if model not in ("rgb", "rgba", "rgba256"):
        raise ValueError(f"to_png draws go.Image z in the rgb, rgba and rgba256 colour models, got {model!r}")
    if model == "rgba":  # alpha in [0, 1]
        pixels = np.concatenate([pixels[..., :3], pixels[..., 3:] * 255], axis=-1)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _edges(count: int, centres: Any, start: Any, step: Any) -> tuple[float, float]:
    """Outer edges ``(first, last)`` of ``count`` cells given their centres or ``start``/``step``."""
    if centres is not None and len(plotly_array(centres)) == count:
        values = plotly_array(centres).astype(float)
        half = (values[1] - values[0]) / 2 if count > 1 else 0.5
        return float(values[0] - half), float(values[-1] + half)
    start, step = float(0 if start is None else start), float(1 if step is None else step)
    return start - step / 2, start + step * (count - 0.5)


class _Drawing:
    """One figure drawn onto one matplotlib figure (see :func:`to_png`)."""

    def __init__(self, figure: go.Figure, canvas, width: int, height: int) -> None:
        self.figure, self.canvas, self.width, self.height = figure, canvas, width, height
        margin = figure.layout.margin
        self.margin = {side: float(getattr(margin, side) if getattr(margin, side) is not None else default)
                       for side, default in _MARGIN.items()}
        scales = [trace for trace in figure.data if trace.type == "heatmap" and trace.showscale is not False]
        if scales:  # plotly widens the right margin to fit a colour bar (and its tick labels) outside the plot
            thickness = max(30 if trace.colorbar.thickness is None else trace.colorbar.thickness for trace in scales)
            self.margin["r"] = max(self.margin["r"], float(thickness) + 60)
        # the plot area as [left, bottom, width, height] figure fractions
        self.area = (self.margin["l"] / width, self.margin["b"] / height,
                     max(width - self.margin["l"] - self.margin["r"], 1) / width,
                     max(height - self.margin["t"] - self.margin["b"], 1) / height)
        self.paper = canvas.add_axes(self.area, zorder=10)
        self.paper.set_axis_off()
        self.paper.set_xlim(0, 1)
        self.paper.set_ylim(0, 1)
        self.axes: dict[tuple[str, str], Any] = {}

    def draw(self) -> None:
        for index, trace in enumerate(self.figure.data):
            axes = self._axes(trace.xaxis or "x", trace.yaxis or "y")
            getattr(self, f"_{trace.type}")(axes, trace, index)
        self._include_shapes()
        for (x_name, y_name), axes in self.axes.items():
            self._finish_axes(axes, x_name, y_name)
        for shape in self.figure.layout.shapes:
            self._shape(shape)
        for annotation in self.figure.layout.annotations:
            self._annotation(annotation)
        title = _text(self.figure.layout.title.text)
        if title:
            self.canvas.text(0.5, 1 - self.margin["t"] / 2 / self.height, title, ha="center", va="center", fontsize=14)

    def _axis(self, name: str):
        """The layout axis object of ``"x"``, ``"x2"``, ``"y3"``... ."""
        return self.figure.layout[f"{name[0]}axis{name[1:]}"]

    def _axes(self, x_name: str, y_name: str):
        if (x_name, y_name) not in self.axes:
            x_domain = self._axis(x_name).domain or (0, 1)
            y_domain = self._axis(y_name).domain or (0, 1)
            left, bottom, width, height = self.area
            axes = self.canvas.add_axes((left + x_domain[0] * width, bottom + y_domain[0] * height,
                                         (x_domain[1] - x_domain[0]) * width, (y_domain[1] - y_domain[0]) * height))
            axes.set_facecolor(_colour(_layout_value(self.figure, "plot_bgcolor") or "white"))
            for spine in axes.spines.values():
                spine.set_visible(False)
            self.axes[(x_name, y_name)] = axes
        return self.axes[(x_name, y_name)]

    def _include_shapes(self) -> None:
        """Widen each axis' data limits to its shapes in data coordinates (plotly's autorange
        includes them, e.g. a threshold line drawn with ``add_hline``)."""
        for shape in self.figure.layout.shapes:
            for letter, reference, ends in (("x", shape.xref, (shape.x0, shape.x1)), ("y", shape.yref, (shape.y0, shape.y1))):
                if not reference or reference == "paper" or reference.endswith("domain") or None in ends:
                    continue
                for names, axes in self.axes.items():
                    if names[0 if letter == "x" else 1] == reference:
                        other = axes.dataLim.intervaly if letter == "x" else axes.dataLim.intervalx
                        points = [(float(end), other[0]) if letter == "x" else (other[0], float(end)) for end in ends]
                        axes.update_datalim(points, updatex=letter == "x", updatey=letter == "y")
                        axes.autoscale_view()

    def _finish_axes(self, axes, x_name: str, y_name: str) -> None:
        has_image = any(trace.type == "image" and (trace.xaxis or "x") == x_name and (trace.yaxis or "y") == y_name
                        for trace in self.figure.data)
        for letter, name in (("x", x_name), ("y", y_name)):
            axis = self._axis(name)
            limits = getattr(axes, f"get_{letter}lim")()
            if axis.range is not None:
                limits = tuple(float(value) for value in axis.range)
            elif axis.autorange == "reversed" or (letter == "y" and has_image and axis.autorange is None):
                limits = (max(limits), min(limits))
            getattr(axes, f"set_{letter}lim")(limits)
            if axis.showticklabels is False:
                getattr(axes, f"set_{letter}ticks")([])
            if axis.title.text:
                getattr(axes, f"set_{letter}label")(_text(axis.title.text))
        anchor = self._axis(y_name).scaleanchor
        if anchor == x_name or (has_image and anchor is None):
            axes.set_aspect("equal", adjustable="box")

    # -- traces ------------------------------------------------------------------------------

    def _image(self, axes, trace, index: int) -> None:
        pixels = _image_pixels(trace)
        rows, columns = pixels.shape[:2]
        x0, dx = float(trace.x0 or 0), float(trace.dx or 1)
        y0, dy = float(trace.y0 or 0), float(trace.dy or 1)
        extent = (x0 - dx / 2, x0 + dx * (columns - 0.5), y0 + dy * (rows - 0.5), y0 - dy / 2)
        axes.imshow(pixels, extent=extent, origin="upper", interpolation="nearest", zorder=index,
                    alpha=1.0 if trace.opacity is None else float(trace.opacity))

    def _heatmap(self, axes, trace, index: int) -> None:
        from matplotlib.colors import Normalize

        values = plotly_array(trace.z).astype(float)
        if values.ndim != 2:
            raise ValueError(f"to_png draws 2-d heatmap z, got shape {list(values.shape)}")
        rows, columns = values.shape
        left, right = _edges(columns, trace.x, trace.x0, trace.dx)
        bottom, top = _edges(rows, trace.y, trace.y0, trace.dy)
        low = float(np.nanmin(values)) if trace.zmin is None else float(trace.zmin)
        high = float(np.nanmax(values)) if trace.zmax is None else float(trace.zmax)
        colormap = _colormap(trace.colorscale or _DEFAULT_COLORSCALE, bool(trace.reversescale))
        norm = Normalize(low, high)
        axes.imshow(np.ma.masked_invalid(values), extent=(left, right, bottom, top), origin="lower", cmap=colormap,
                    norm=norm, interpolation="nearest", aspect="auto", zorder=index,
                    alpha=1.0 if trace.opacity is None else float(trace.opacity))
        if trace.showscale is not False:
            self._colour_bar(trace, colormap, norm)

    def _colour_bar(self, trace, colormap, norm) -> None:
        from matplotlib.colorbar import ColorbarBase

        bar = trace.colorbar
        left, bottom, width, height = self.area
        x = 1.02 if bar.x is None else float(bar.x)
        length = 1.0 if bar.len is None else float(bar.len)
        y = 0.5 if bar.y is None else float(bar.y)
        thickness = (30 if bar.thickness is None else float(bar.thickness)) / self.width
        axes = self.canvas.add_axes((left + x * width, bottom + (y - length / 2) * height, thickness, length * height))
        ColorbarBase(axes, cmap=colormap, norm=norm)
        if bar.title.text:
            axes.set_title(_text(bar.title.text), fontsize=8, loc="left")

    def _scatter(self, axes, trace, index: int) -> None:
        x, y = plotly_array(trace.x), plotly_array(trace.y)
        if x.size == 0 and y.size:
            x = np.arange(len(y))
        mode = trace.mode or ("lines+markers" if len(y) < 20 else "lines")
        default = _COLORWAY[index % len(_COLORWAY)]
        alpha = 1.0 if trace.opacity is None else float(trace.opacity)
        if "lines" in mode:
            dash = {"dash": "--", "dot": ":", "dashdot": "-."}.get(trace.line.dash or "solid", "-")
            axes.plot(x, y, color=_colour(trace.line.color or default, alpha), linestyle=dash, zorder=index,
                      linewidth=(2 if trace.line.width is None else float(trace.line.width)) * 72 / _DPI)
        if "markers" in mode:  # plotly: markers take the line's colour unless given their own
            self._markers(axes, trace, x, y, trace.line.color or default, alpha, index)
        if "text" in mode and trace.text is not None:
            texts = [trace.text] * len(x) if isinstance(trace.text, str) else list(trace.text)
            for px, py, text in zip(x, y, texts):
                axes.text(px, py, _text(text), ha="center", va="bottom", fontsize=8, zorder=index)

    def _scattergl(self, axes, trace, index: int) -> None:  # WebGL scatter: the same drawing
        self._scatter(axes, trace, index)

    @staticmethod
    def _scaled_colours(marker, values: np.ndarray, alpha: float) -> list[tuple[float, float, float, float]]:
        """RGBA of numeric marker colours: ``values`` min-max scaled over ``[cmin, cmax]`` (default
        their range) through ``marker.colorscale`` (default plotly's Plasma)."""
        if not values.size:
            return []
        low = float(np.nanmin(values)) if marker.cmin is None else float(marker.cmin)
        high = float(np.nanmax(values)) if marker.cmax is None else float(marker.cmax)
        scaled = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
        colormap = _colormap(marker.colorscale if marker.colorscale is not None else "Plasma",
                             reverse=bool(marker.reversescale))
        return [(*colormap(value)[:3], 1.0 if alpha is None else alpha) for value in scaled]

    def _markers(self, axes, trace, x, y, default: str, alpha: float, index: int) -> None:
        marker = trace.marker
        count = len(x)
        colours = marker.color if marker.color is not None else default
        if isinstance(colours, str):
            colours = [colours] * count
        numeric = plotly_array(colours) if not isinstance(colours, (list, tuple)) or not any(
            isinstance(colour, str) for colour in colours) else None
        if numeric is not None and numeric.dtype.kind in "iuf":  # values through the marker's colour scale
            colours = self._scaled_colours(marker, np.broadcast_to(numeric.astype(float), (count,)), alpha)
        else:
            colours = [_colour(colour, alpha) for colour in list(colours)]
        sizes = plotly_array(6 if marker.size is None else marker.size).astype(float)
        diameters = np.broadcast_to(sizes, (count,)) * 72 / _DPI  # plotly: diameter in px; matplotlib: points
        symbols = marker.symbol if marker.symbol is not None else "circle"
        symbols = [symbols] * count if isinstance(symbols, str) else list(symbols)
        edge = _colour(marker.line.color, alpha) if marker.line.color is not None else None
        edge_width = (0 if marker.line.width is None else float(marker.line.width)) * 72 / _DPI
        for px, py, colour, diameter, symbol in zip(x, y, colours, diameters, symbols):
            hollow = "open" in str(symbol)
            shape = {"square": "s", "diamond": "D", "cross": "P", "x": "X", "triangle-up": "^", "star": "*"}.get(
                str(symbol).replace("-open", ""), "o")
            axes.scatter([px], [py], s=diameter ** 2, marker=shape, zorder=index + 0.5,
                         facecolors="none" if hollow else [colour], edgecolors=[colour] if hollow else [edge or colour],
                         linewidths=max(edge_width, 1.0) if hollow else edge_width)

    def _bar(self, axes, trace, index: int) -> None:
        x, y = plotly_array(trace.x), plotly_array(trace.y)
        colour = trace.marker.color if isinstance(trace.marker.color, str) else _COLORWAY[index % len(_COLORWAY)]
        if trace.orientation == "h":
            axes.barh(y if y.size else np.arange(len(x)), x, color=_colour(colour), zorder=index)
        else:
            axes.bar(x if x.size else np.arange(len(y)), y, color=_colour(colour), zorder=index)

    def _box(self, axes, trace, index: int) -> None:
        """One box per distinct position (``x`` of a vertical box, ``y`` of a horizontal one; else
        one box at the trace's index, labelled with its name), points drawn when ``boxpoints="all"``."""
        horizontal = trace.orientation == "h"
        values = plotly_array(trace.x if horizontal else trace.y).astype(float)
        where = trace.y if horizontal else trace.x
        positions = plotly_array(where) if where is not None else np.full(len(values), float(index))
        colour = _colour(trace.line.color or trace.marker.color or _COLORWAY[index % len(_COLORWAY)])
        if positions.dtype.kind not in "biuf":  # categories: one slot each, in order of appearance
            labels = list(dict.fromkeys(positions.tolist()))
            positions = np.array([labels.index(label) for label in positions.tolist()], dtype=float)
            getattr(axes, "set_yticks" if horizontal else "set_xticks")(range(len(labels)), labels)
        elif where is None and trace.name is not None:
            getattr(axes, "set_yticks" if horizontal else "set_xticks")([index], [trace.name])
        slots = np.unique(positions)
        groups = [values[(positions == slot) & np.isfinite(values)] for slot in slots]
        axes.boxplot(groups, positions=slots, orientation="horizontal" if horizontal else "vertical",
                     widths=0.6 * (np.min(np.diff(slots)) if len(slots) > 1 else 1.0), patch_artist=True,
                     boxprops={"facecolor": (*colour[:3], 0.5), "edgecolor": colour}, medianprops={"color": colour},
                     whiskerprops={"color": colour}, capprops={"color": colour}, showfliers=trace.boxpoints != "all",
                     manage_ticks=False, zorder=index)
        if trace.boxpoints == "all":
            along, across = (values, positions) if horizontal else (positions, values)
            axes.scatter(along, across, s=(6 if trace.marker.size is None else float(trace.marker.size)) ** 2 * 0.5,
                         color=[_colour(trace.marker.color or colour)], zorder=index + 0.5)

    # -- layout ------------------------------------------------------------------------------

    def _transform(self, reference: str | None, letter: str):
        """Matplotlib transform along ``letter`` of a plotly ``xref``/``yref``: ``"paper"``,
        ``"x2"`` (data) or ``"x2 domain"``."""
        reference = reference or "paper"
        if reference == "paper":
            return self.paper.transAxes
        name, _, domain = reference.partition(" ")
        axes = next((axes for names, axes in self.axes.items() if names[0 if letter == "x" else 1] == name), None)
        if axes is None:  # an axis no trace uses
            axes = self._axes(name if letter == "x" else "x", name if letter == "y" else "y")
        return axes.transAxes if domain == "domain" else axes.transData

    def _shape(self, shape) -> None:
        from matplotlib.patches import Ellipse, Rectangle
        from matplotlib.transforms import blended_transform_factory

        transform = blended_transform_factory(self._transform(shape.xref, "x"), self._transform(shape.yref, "y"))
        line_colour = _colour(shape.line.color or "#2a3f5f", 1.0 if shape.opacity is None else float(shape.opacity))
        width = (2 if shape.line.width is None else float(shape.line.width)) * 72 / _DPI
        x0, x1, y0, y1 = (float(value) for value in (shape.x0, shape.x1, shape.y0, shape.y1))
        style = {"transform": transform, "clip_on": False, "zorder": 20, "linewidth": width, "edgecolor": line_colour}
        fill = (_colour(shape.fillcolor, 1.0 if shape.opacity is None else float(shape.opacity)) if shape.fillcolor
                else "none")
        if shape.type == "line":
            dash = {"dash": "--", "dot": ":", "dashdot": "-."}.get(shape.line.dash or "solid", "-")
            self.paper.plot([x0, x1], [y0, y1], transform=transform, color=line_colour, linewidth=width, clip_on=False,
                            linestyle=dash, zorder=20)
        elif shape.type == "rect":
            self.paper.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=fill, **style))
        elif shape.type == "circle":
            self.paper.add_patch(Ellipse(((x0 + x1) / 2, (y0 + y1) / 2), x1 - x0, y1 - y0, facecolor=fill, **style))
        else:
            raise ValueError(f"to_png draws line, rect and circle shapes, got {shape.type!r}")

    def _annotation(self, annotation) -> None:
        from matplotlib.transforms import blended_transform_factory

        transform = blended_transform_factory(self._transform(annotation.xref, "x"),
                                              self._transform(annotation.yref, "y"))
        anchors = {"x": {"left": "left", "right": "right"}, "y": {"top": "top", "bottom": "bottom"}}
        text_style = {
            "ha": anchors["x"].get(annotation.xanchor, "center"),
            "va": anchors["y"].get(annotation.yanchor, "center"),
            "fontsize": (12 if annotation.font.size is None else float(annotation.font.size)) * 72 / _DPI,
            "color": _colour(annotation.font.color or "#2a3f5f"), "zorder": 30, "annotation_clip": False,
        }
        point = (float(annotation.x or 0), float(annotation.y or 0))
        if annotation.showarrow is False:
            self.paper.annotate(_text(annotation.text), point, xycoords=transform, **text_style)
        else:  # plotly's default: the text offset by (ax, ay) screen pixels, an arrow to the point
            offset = (-10 if annotation.ax is None else float(annotation.ax),
                      30 if annotation.ay is None else -float(annotation.ay))
            self.paper.annotate(_text(annotation.text), point, xycoords=transform, xytext=offset,
                                textcoords="offset pixels", arrowprops={"arrowstyle": "-", "color": text_style["color"]},
                                **text_style)
