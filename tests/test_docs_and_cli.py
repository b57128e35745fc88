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


def test_main_command_writes_html_and_netcdf(tmp_path, capsys):
    from vidinterp.cli import main

    assert main(["run", "--out", str(tmp_path), "--steps", "10"]) == 0
    assert (tmp_path / "trace.html").stat().st_size > 10_000
    import vidinterp

    loaded = vidinterp.Trace.load(tmp_path / "trace.nc")
    assert {"imap", "gramcol", "concept_attention", "cross_attention"} <= set(loaded.maps.data_vars)
    assert "wrote" in capsys.readouterr().out


def test_zoo_model_renoises_its_bundled_clip(tmp_path, capsys, monkeypatch):
    import vidinterp
    from vidinterp.cli import main
    from vidinterp.zoo import ShapesModelConfig, build_shapes_pipeline

    untrained = build_shapes_pipeline(ShapesModelConfig(num_layers=2))  # stands in for the packaged weights
    monkeypatch.setattr(vidinterp.zoo, "load", lambda name: untrained)
    assert main(["run", "--model", "zoo:shapes", "--out", str(tmp_path), "--steps", "10"]) == 0
    entry = vidinterp.zoo.demo_clip("shapes")
    assert f"prompt: {entry.caption!r}; concepts: {list(entry.concepts)}" in capsys.readouterr().out
    assert vidinterp.Trace.load(tmp_path / "trace.nc").maps.sizes["concept"] == len(entry.concepts)


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
