"""README examples, the main command and the notebooks run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A first trace in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["trace"].maps.cross_attention.dims == ("concept", "frame", "y", "x")


def test_main_command_runs_imap_on_the_bundled_model_and_clip(tmp_path, capsys):
    import vidinterp
    from vidinterp.cli import DEFAULT_MODEL, main

    assert DEFAULT_MODEL == "zoo:shapes"
    assert main(["run", "--out", str(tmp_path), "--steps", "10"]) == 0
    assert (tmp_path / "trace.html").stat().st_size > 10_000
    loaded = vidinterp.Trace.load(tmp_path / "trace.nc")
    assert {"imap", "gramcol", "concept_attention", "cross_attention"} <= set(loaded.maps.data_vars)
    entry = vidinterp.zoo.demo_clip("shapes")
    assert list(loaded.maps.concept.values) == list(entry.concepts)
    assert "wrote" in capsys.readouterr().out


def test_main_command_runs_a_tiny_pipeline_on_a_synthetic_clip(tmp_path):
    import vidinterp
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-cogvideox", "--out", str(tmp_path), "--steps", "10",
                 "--methods", "imap", "cross_attention"]) == 0
    assert set(vidinterp.Trace.load(tmp_path / "trace.nc").maps.data_vars) >= {"imap", "cross_attention"}


@pytest.mark.parametrize("family, methods", [
    ("cogvideox", {"imap", "gramcol", "concept_attention", "cross_attention"}),
    ("hunyuan_video", {"imap", "gramcol", "concept_attention", "cross_attention"}),
    ("wan", {"imap", "gramcol", "cross_attention"}),  # no joint sites: no ConceptAttention
    ("ltx", {"imap", "gramcol", "cross_attention"}),  # no joint sites: no ConceptAttention
    ("skyreels_v2", {"imap", "gramcol", "cross_attention"}),  # no joint sites: no ConceptAttention
    ("mochi", {"imap", "gramcol", "concept_attention", "cross_attention"}),
    ("flux", {"gramcol", "concept_attention", "cross_attention"}),  # one frame: no motion heads
    ("sd3", {"gramcol", "concept_attention", "cross_attention"}),
])
def test_every_tiny_model_runs_its_default_methods(tmp_path, family, methods):
    import vidinterp
    from vidinterp.cli import main

    assert main(["run", "--model", f"tiny-{family}", "--out", str(tmp_path), "--steps", "4"]) == 0
    assert set(vidinterp.Trace.load(tmp_path / "trace.nc").maps.data_vars) == methods


@pytest.mark.parametrize("arguments, message", [
    (["--model", "tiny-wan", "--methods", "concept_attention"], "reads sites of kind ['joint'], but wan has"),
    (["--model", "tiny-cogvideox", "--video", "clip.mp4"], "--concepts is required with --video"),
    (["--model", "tiny-cogvideox", "--video", "missing.mp4", "--concepts", "dog"], "video file not found: missing.mp4"),
    (["--model", "tiny-cogvideox", "--memory-limit", "1000"], "more than the limit memory_limit='1000' (1000 B)"),
])
def test_user_errors_are_one_line(tmp_path, capsys, arguments, message):
    from vidinterp.cli import main

    assert main(["run", "--out", str(tmp_path / "out"), "--steps", "4", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("vidinterp: error: ") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_out_is_checked_before_the_model_loads(tmp_path, capsys):
    from vidinterp.cli import main

    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert main(["run", "--model", "zoo:nope", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"
    with pytest.raises(ValueError, match="is a file"):
        main(["run", "--out", str(target), "--debug"])


def test_main_command_rejects_unknown_method(tmp_path, capsys):
    from vidinterp.cli import main

    assert main(["run", "--out", str(tmp_path), "--methods", "nonsense"]) == 2
    assert "available" in capsys.readouterr().err


def test_main_command_names_the_zoo_models_for_an_unknown_one(tmp_path, capsys):
    from vidinterp.cli import main

    assert main(["run", "--out", str(tmp_path), "--model", "zoo:nope"]) == 2
    assert "available: ['shapes']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(notebook):
    import nbformat
    from nbclient import NotebookClient

    document = nbformat.read(notebook, as_version=4)
    NotebookClient(document, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert_every_figure_has_a_static_image(document)


PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


def figure_outputs(document) -> list[dict]:
    return [output.get("data", {}) for cell in document.cells if cell.cell_type == "code" for output in cell.outputs
            if PLOTLY_MIMETYPE in output.get("data", {})]


def assert_every_figure_has_a_static_image(document) -> None:
    """Static viewers (GitHub) draw image/png, not plotly's mimetype: every figure needs both."""
    figures = figure_outputs(document)
    missing = [index for index, data in enumerate(figures) if "image/png" not in data]
    assert not missing, f"figure outputs {missing} have no static PNG: display them with vidinterp.plotting.show"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_reads_on_static_viewers(notebook):
    """The committed file holds its outputs (``python notebooks/execute.py``), without errors, and
    a PNG beside every interactive figure."""
    import nbformat

    document = nbformat.read(notebook, as_version=4)
    code = [cell for cell in document.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "run python notebooks/execute.py and commit"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert_every_figure_has_a_static_image(document)
