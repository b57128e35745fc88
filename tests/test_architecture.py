"""Layering rules of docs/architecture.md: the core knows no model; adapters and analyses
register."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vidinterp

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = re.compile(r"CogVideo|Hunyuan|Wan|Flux|SD3|StableDiffusion3|Mochi|LTX", re.I)


def imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def core_files() -> list[Path]:
    """The model-agnostic core: ``vidinterp/`` without ``vidinterp/testing/``, whose per-family
    modules build the tiny and planted test pipelines and so name model classes."""
    return [path for path in (ROOT / "vidinterp").rglob("*.py") if "testing" not in path.relative_to(ROOT).parts]


def test_core_imports_no_model_specific_class_and_no_adapter():
    for path in core_files():
        for name in imported_names(path):
            assert not MODEL_NAMES.search(name), f"{path.relative_to(ROOT)} imports {name}"
            assert not name.startswith(("vidinterp.adapters.", "vidinterp.analyses.", "vidinterp.zoo")), (
                f"{path.relative_to(ROOT)} imports {name}: the core reaches adapters/analyses only via the registry"
                " and the zoo only lazily"
            )


def test_every_adapter_and_analysis_file_registers_itself():
    adapters = {path.stem for path in (ROOT / "adapters").glob("[!_]*.py")}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in vidinterp.adapter_classes().values()} == adapters
    analyses = {cls.__module__.rsplit(".", 1)[1] for cls in vidinterp.analysis_classes().values()}
    helpers = {"cluster_scores", "spectral", "heads", "surrogate", "official_imap"}  # selectors, kernels, presets
    assert analyses | helpers == {path.stem for path in (ROOT / "analyses").glob("[!_]*.py")}
