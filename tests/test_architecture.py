"""Layering rules of docs/architecture.md: the core knows no model; adapters and analyses
register."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vidinterp

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = re.compile(r"CogVideo|Hunyuan|Wan|Flux|SD3|StableDiffusion3|Mochi|LTX|SkyReels", re.I)


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
    presets = {"official_imap"}  # kernels, selectors and shared bases live in the core
    assert analyses | presets == {path.stem for path in (ROOT / "analyses").glob("*.py")} - {"__init__"}


def test_no_adapter_file_builds_test_pipelines():
    """Tiny (and planted) test pipelines live in ``vidinterp/testing/``, registered by family; an
    adapter file defines no tiny builder and imports nothing from ``vidinterp.testing``."""
    for path in sorted((ROOT / "adapters").glob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        defined |= {target.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(target, ast.Name)}
        tiny = sorted(name for name in defined if name.lower().lstrip("_").startswith("tiny"))
        assert not tiny, f"{path.relative_to(ROOT)} defines {tiny}: tiny builders belong in vidinterp/testing/"
        for name in imported_names(path):
            assert not name.startswith("vidinterp.testing"), (
                f"{path.relative_to(ROOT)} imports {name}: adapters build no test pipelines"
            )
    for cls in vidinterp.adapter_classes().values():
        assert not any(hasattr(cls, name) for name in ("tiny_pipeline", "tiny_variants", "TINY_VARIANTS")), cls
