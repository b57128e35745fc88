"""One self-contained HTML report of plotly figures that opens anywhere, offline.

:func:`write_report` writes one ``.html`` file: a title, a table of the settings that produced
the figures (model, prompt, concepts, methods, steps, versions), optional notes, then every
figure, interactive. plotly.js is inlined **once** (about 4.8 MB) for all figures; nothing is
loaded from the network; animations never start on their own (a slider and a play button).
:func:`report_for_trace` makes the report of a :class:`~vidinterp.Trace`: its default figures and
its attrs as the settings. The write is atomic (a temporary file renamed into place), so a
failed write leaves an earlier report at the path byte-identical.

Before writing, every figure is made compact (:func:`vidinterp.plotting.compact_figure`, lossless for what is
shown): ``go.Image`` pixel arrays become PNG data URIs (``source=``), float64 arrays float32, and
animation frames leave out the traces that never change.

Sizes (``vidinterp run`` default: the ``zoo:shapes`` model, 6 pixel frames of 32x32, 5 concepts,
4 methods; one map panel per method and concept; plotly.py 7.1 with plotly.js 4.1.1, measured
with docs/reports.md's script):

==============================================  ============  ============
bytes                                           plain figure  compact
==============================================  ============  ============
plotly.js, inlined once (fixed cost)            4,815,765     4,815,765
maps figure, 4 methods, 6 frames                821,676       215,226
maps figure, 1 method, 6 frames                 211,244       60,469
whole report of the default trace               5,641,773     5,035,323
each pixel frame, per method (5 concepts)       ~28,700       ~7,060
each method, besides its frames                 ~31,200       ~9,440
==============================================  ============  ============

So a compact panel (one method, one concept) costs about 1.4 kB per pixel frame (the 32x32 frame
as a PNG, about 0.3 kB, and the 8x8 map, its colour scale and hover text, about 1 kB).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from vidinterp.plotting.compact import compact_figure
from vidinterp.trace_file import atomic_output

if TYPE_CHECKING:
    from vidinterp.results import Trace

__all__ = ["write_report", "report_for_trace", "default_figures", "REPORT_SUFFIXES", "REPORT_FIGURES"]

#: File name endings a report may have.
REPORT_SUFFIXES = (".html", ".htm")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table.settings { border-collapse: collapse; margin-bottom: 1.5em; }
table.settings th, table.settings td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
  vertical-align: top; font-size: 0.9em; }
table.settings th { background: #f2f2f2; font-weight: 600; }
section.figure { margin-bottom: 2.5em; }
p.generated { color: #666; font-size: 0.85em; }
"""


def write_report(
    path: str | PathLike,
    figures: Sequence[go.Figure] | Mapping[str, go.Figure],
    *,
    title: str,
    settings: Mapping[str, Any],
    notes: str | Sequence[str] | None = None,
    compact: bool = True,
) -> Path:
    """Write an offline, self-contained HTML report of ``figures`` to ``path`` (atomically).

    Args:
        path: the file to write, ending in ``.html`` or ``.htm``; parent folders are created.
        figures: plotly figures, in order; a Mapping gives each a heading (its key), a Sequence
            uses each figure's layout title (else ``"Figure {i}"``).
        title: the page title and top heading.
        settings: what produced the figures (model, prompt, concepts, methods, steps,
            versions, ...): one table row per key; lists are joined with ``", "``.
        notes: free text (one paragraph, or one per item) shown under the settings.
        compact: make each figure compact first (:func:`compact_figure`; default ``True``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no figures, an empty title, or a ``path`` not ending in ``.html``/``.htm``.
        TypeError: a figure that is not a ``plotly.graph_objects.Figure``, or ``settings`` that
            is not a Mapping.
    """
    path = Path(path)
    named = _named_figures(figures)
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(f"a report is an HTML file: the path must end in one of {REPORT_SUFFIXES}, got {str(path)!r}")
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"title must be a non-empty string, got {title!r}")
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a Mapping of setting name to value, got {type(settings).__name__}")
    if compact:
        named = [(name, compact_figure(figure)) for name, figure in named]
    page = _page(named, title=title, settings=settings, notes=notes)
    with atomic_output(path, what="writing the report") as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


#: ``Trace.plot_<name>`` figures a default report adds after the map overlays, when the trace has
#: their data (the comparison view repeats the overlays; the head scatter needs ground truth).
REPORT_FIGURES = ("lambda2", "lambda2_steps", "separation", "qk_peaks", "head_embeddings")


def default_figures(trace: "Trace") -> dict[str, go.Figure]:
    """The figures :func:`report_for_trace` shows by default: ``trace.plot()`` (map overlays)
    first, then each ``Trace.plot_<name>()`` of :data:`REPORT_FIGURES` under the heading
    ``<name>``. A figure whose method raises ``ValueError`` or ``KeyError`` (the trace lacks its
    data, e.g. ``plot_lambda2`` without a Lambda2 analysis) is left out."""
    figures = {"maps": trace.plot()}
    for name in REPORT_FIGURES:
        try:
            figures[name] = getattr(trace, f"plot_{name}")()
        except (ValueError, KeyError):
            continue
    return figures


def report_for_trace(
    trace: "Trace",
    path: str | PathLike,
    figures: Sequence[go.Figure] | Mapping[str, go.Figure] | None = None,
    *,
    title: str | None = None,
    notes: str | Sequence[str] | None = None,
) -> Path:
    """Write the report of ``trace`` to ``path``: ``figures`` (default :func:`default_figures`)
    with the trace's attrs (model, prompt, concepts, per-method settings, steps, seed), its map
    methods and its video size as the settings. ``title`` defaults to ``"vidinterp: {model} ·
    {prompt}"``. See :func:`write_report` for the file and the errors."""
    figures = default_figures(trace) if figures is None else figures
    settings: dict[str, Any] = {
        "methods": list(trace.maps.data_vars),
        **({"video": "{} frames of {}x{} pixels".format(*trace.video.shape[:3])} if trace.video is not None else {}),
        **trace.attrs,
    }
    if title is None:
        title = f"vidinterp: {trace.attrs.get('model', 'trace')} · {trace.attrs.get('prompt', '')}".rstrip(" ·")
    return write_report(path, figures, title=title, settings=settings, notes=notes)


def _named_figures(figures: Sequence[go.Figure] | Mapping[str, go.Figure]) -> list[tuple[str, go.Figure]]:
    if isinstance(figures, go.Figure):
        raise TypeError("figures must be a list or a dict of figures; wrap a single figure as [figure]")
    if isinstance(figures, Mapping):
        named = [(str(name), figure) for name, figure in figures.items()]
    elif isinstance(figures, Sequence) and not isinstance(figures, (str, bytes)):
        named = [(_title_of(figure) or f"Figure {index + 1}", figure) for index, figure in enumerate(figures)]
    else:
        raise TypeError(f"figures must be a list or a dict of plotly figures, got {type(figures).__name__}")
    if not named:
        raise ValueError("no figures to report: give at least one plotly figure")
    for name, figure in named:
        if not isinstance(figure, go.Figure):
            raise TypeError(f"figure {name!r} is a {type(figure).__name__}, expected a plotly.graph_objects.Figure")
    return named


def _title_of(figure: Any) -> str | None:
    return getattr(getattr(getattr(figure, "layout", None), "title", None), "text", None)


def _page(named: list[tuple[str, go.Figure]], *, title: str, settings: Mapping[str, Any],
          notes: str | Sequence[str] | None) -> str:
    import plotly
    import plotly.offline

    from vidinterp import __version__

    sections = []
    for index, (name, figure) in enumerate(named, start=1):
        div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{index}", auto_play=False,
                             config={"displaylogo": False, "responsive": True})
        sections.append(f'<section class="figure" id="section-{index}"><h2>{html.escape(name)}</h2>\n{div}\n</section>')
    paragraphs = [notes] if isinstance(notes, str) else list(notes or [])
    notes_html = "".join(f"<p>{html.escape(str(paragraph))}</p>\n" for paragraph in paragraphs)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="generated">written by vidinterp {html.escape(__version__)} with plotly.py '
        f"{html.escape(plotly.__version__)}; opens offline (plotly.js is inside this file)</p>",
        '<section id="settings"><h2>Settings</h2>',
        _settings_table(settings),
        "</section>",
        f'<section id="notes">{notes_html}</section>' if notes_html else "",
        *sections,
        "</body></html>",
    ])


def _settings_table(settings: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_setting_text(value))}</td></tr>\n"
                   for key, value in settings.items())
    return f'<table class="settings">\n{rows}</table>'


def _setting_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_setting_text(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_text(item) for item in value)
    return str(value)
