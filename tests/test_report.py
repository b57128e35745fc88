"""Self-contained HTML reports (vidinterp.report): one inlined plotly.js, settings, no network,
and every figure rendered without a console error in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import plotly.io as pio
import pytest

import vidinterp
import vidinterp.testing
from vidinterp.analyses import CrossAttention
from vidinterp.plotting import compact_figure
from vidinterp.report import default_figures, report_for_trace, write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PLOTLY_BANNER = "* plotly.js v"  # the licence header that opens plotly.min.js, once per copy


@pytest.fixture(scope="module")
def trace():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    return vidinterp.trace(pipe, prompt="a dog <running> & jumping", concepts=["dog"], num_inference_steps=2,
                           analyses=[CrossAttention()])


def extra_figures() -> dict[str, go.Figure]:
    heatmap = go.Figure(go.Heatmap(z=np.arange(12.0).reshape(3, 4)), layout={"title": {"text": "a heatmap"}})
    scatter = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 0, 2], mode="lines+markers"))
    return {"heatmap": heatmap, "scatter": scatter}


@pytest.fixture(scope="module")
def report(trace, tmp_path_factory) -> Path:
    figures = {**default_figures(trace), **extra_figures()}
    return report_for_trace(trace, tmp_path_factory.mktemp("report") / "report.html", figures,
                            notes="tiny random weights: the maps mean nothing")


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def render(path: Path) -> tuple[str, list[str]]:
    """``(DOM after load, console lines)`` of ``path`` in headless Chromium, offline."""
    found = browser()
    if found is None:
        pytest.skip(f"no headless browser: none of {BROWSERS} is on PATH (install chromium to run this test)")
    result = subprocess.run(
        [found, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--no-first-run", "--disable-extensions", "--proxy-server=127.0.0.1:9",
         f"--user-data-dir={path.parent / 'chromium-profile'}", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return result.stdout, console


def test_browser_check_catches_a_script_error(tmp_path):
    """The harness itself: a page with an uncaught error shows up in the console lines."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notAFunction();</script></body></html>")
    _, console = render(page)
    assert any("Uncaught ReferenceError" in line for line in console)


def test_every_figure_renders_without_console_errors(report):
    dom, console = render(report)
    assert console == []
    figures = re.findall(r'<div id="(figure-\d+)"', dom)
    assert figures == [f"figure-{index}" for index in range(1, 4)]  # maps, heatmap, scatter
    for index, section in enumerate(re.split(r'<div id="figure-\d+"', dom)[1:], start=1):
        assert 'class="main-svg"' in section, f"figure-{index} was not drawn by plotly"
    assert dom.count('class="plot-container plotly"') == 3


ANIMATE_LAST_FRAME = """<script>
setTimeout(function () {  // once plotly has added the frames
  var gd = document.getElementById("figure-1");
  var frames = gd._transitionData._frames, last = frames[frames.length - 1];
  Plotly.animate(gd, [last.name], {frame: {duration: 0, redraw: true}, mode: "immediate", transition: {duration: 0}})
    .then(function () {
      var images = last.data.map(function (shown, i) { return [shown, gd.data[last.traces ? last.traces[i] : i]]; })
        .filter(function (pair) { return pair[0].source; });
      var shown = images.filter(function (pair) { return pair[1].source === pair[0].source; }).length;
      console.log("vidinterp-animated: frame " + last.name + ", " + shown + " of " + images.length + " images shown");
    }, function (error) { console.log("vidinterp-animated: error " + error); });
}, 100);
</script>"""


def test_compact_frames_animate_in_the_browser(report, tmp_path):
    """Stepping the maps figure to its last frame shows that frame's images (PNG sources)."""
    page = report.read_text(encoding="utf-8").replace("</body>", ANIMATE_LAST_FRAME + "</body>")
    animated = tmp_path / "animated.html"
    animated.write_text(page, encoding="utf-8")
    _, console = render(animated)
    reports = [line for line in console if "vidinterp-animated" in line]
    assert len(reports) == 1 and len(console) == 1, console
    shown = re.search(r"frame (\d+), (\d+) of (\d+) images shown", reports[0])
    assert shown and int(shown[1]) > 0 and int(shown[2]) == int(shown[3]) > 0, reports


def test_one_copy_of_plotly_and_nothing_from_the_network(report):
    page = report.read_text(encoding="utf-8")
    assert page.count(PLOTLY_BANNER) == 1 == plotly.offline.get_plotlyjs().count(PLOTLY_BANNER)
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts and not any("src=" in tag for tag in scripts)
    outside_plotly = page.replace(plotly.offline.get_plotlyjs(), "")  # plotly.js itself holds link text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", outside_plotly)
    assert "Plotly.animate" not in page  # no auto-play


def test_report_holds_the_settings_title_and_notes(trace, report):
    page = report.read_text(encoding="utf-8")
    assert "<title>vidinterp: cogvideox · a dog &lt;running&gt; &amp; jumping</title>" in page
    table = page.split('<table class="settings">', 1)[1].split("</table>", 1)[0]
    for key, value in [("model", "cogvideox"), ("prompt", "a dog &lt;running&gt; &amp; jumping"),
                       ("methods", "cross_attention"), ("num_inference_steps", "2"),
                       ("video", "{} frames of {}x{} pixels".format(*trace.video.shape[:3]))]:
        assert f"<tr><th>{key}</th><td>{value}</td></tr>" in table
    assert "<p>tiny random weights: the maps mean nothing</p>" in page
    assert [heading for heading in re.findall(r"<h2>([^<]*)</h2>", page)] == ["Settings", "maps", "heatmap", "scatter"]


def test_compact_figure_is_smaller_and_draws_the_same(trace):
    figure = trace.plot()
    compact = compact_figure(figure)
    assert len(pio.to_json(compact)) < 0.9 * len(pio.to_json(figure))  # random-weights video: noisy PNGs
    images = [index for index, drawn in enumerate(figure.data) if drawn.type == "image"]
    assert images and all(compact.data[index].source.startswith("data:image/png;base64,") for index in images)
    heatmap = next(index for index, drawn in enumerate(figure.data) if drawn.type == "heatmap")
    assert np.allclose(compact.data[heatmap].z, figure.data[heatmap].z, atol=1e-6)
    assert len(compact.frames) == len(figure.frames)


def test_frames_leave_out_traces_that_never_change():
    still = go.Scatter(x=[0, 1], y=[0, 1], name="still")
    figure = go.Figure([still, go.Scatter(x=[0], y=[0])],
                       frames=[go.Frame(data=[still, go.Scatter(x=[t], y=[t])], name=str(t)) for t in range(3)])
    compact = compact_figure(figure)
    assert all(frame.traces == (1,) and len(frame.data) == 1 for frame in compact.frames)
    assert [frame.data[0].x for frame in compact.frames] == [(0,), (1,), (2,)]


EARLIER = "<html>an earlier report: these bytes must stay</html>"


@pytest.mark.parametrize("change, error, message", [
    ({"path": "report.pdf"}, ValueError, r"must end in one of \('\.html', '\.htm'\), got '.*report\.pdf'"),
    ({"figures": []}, ValueError, "no figures to report"),
    ({"figures": [{"data": []}]}, TypeError, "figure 'Figure 1' is a dict, expected a plotly.graph_objects.Figure"),
    ({"figures": go.Figure()}, TypeError, r"wrap a single figure as \[figure\]"),
    ({"title": " "}, ValueError, "title must be a non-empty string"),
    ({"settings": ["model"]}, TypeError, "settings must be a Mapping"),
])
def test_bad_input_is_refused_and_leaves_the_earlier_file(tmp_path, change, error, message):
    path = tmp_path / change.pop("path", "report.html")
    path.write_text(EARLIER)
    call = {"figures": [go.Figure(go.Scatter(x=[0], y=[0]))], "title": "t", "settings": {}, **change}
    with pytest.raises(error, match=message):
        write_report(path, **call)
    assert path.read_text() == EARLIER and os.listdir(tmp_path) == [path.name]


def test_interrupted_write_leaves_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text(EARLIER)

    def interrupted(self, *args, **kwargs):
        Path.write_bytes(self, b"<html>half a rep")
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(path, [go.Figure()], title="t", settings={})
    monkeypatch.undo()
    assert path.read_text() == EARLIER and os.listdir(tmp_path) == ["report.html"]


def test_default_report_of_a_full_trace_holds_each_figure_it_has_data_for(tmp_path):
    from vidinterp.analyses.gramcol import GramCol
    from vidinterp.analyses.imap import IMAP
    from vidinterp.analyses.lambda2 import Lambda2
    from vidinterp.analyses.qk_matching import QKMatching
    from vidinterp.analyses.separation import Separation

    pipe = vidinterp.testing.tiny_pipeline("cogvideox", num_layers=2)
    full = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], num_inference_steps=2,
                           analyses=[IMAP(k=1), GramCol(), Lambda2(), Separation(), QKMatching()])
    assert list(default_figures(full)) == ["maps", "lambda2", "lambda2_steps", "separation", "qk_peaks"]
    path = full.report(tmp_path / "trace.html")
    page = path.read_text(encoding="utf-8")
    assert page.count(PLOTLY_BANNER) == 1 and page.count('class="plotly-graph-div"') == 5
