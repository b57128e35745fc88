"""Registries of adapters (model families) and analyses (methods).

The core never imports a model-specific module directly: adapters and analyses register
themselves here when ``vidinterp.adapters`` / ``vidinterp.analyses`` are imported, and the core
looks them up by name or by the model object.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, TypeVar

if TYPE_CHECKING:
    from vidinterp.adapter import Adapter
    from vidinterp.analysis import Analysis

__all__ = [
    "register_adapter",
    "register_analysis",
    "adapter_classes",
    "adapter_class",
    "adapter_for",
    "analysis_classes",
    "using_adapter",
]

_ADAPTERS: dict[str, type["Adapter"]] = {}
_ANALYSES: dict[str, type["Analysis"]] = {}
#: Adapter classes :func:`adapter_for` tries first, innermost last (see :func:`using_adapter`).
_PREFERRED: list[type["Adapter"]] = []

A = TypeVar("A")


def register_adapter(cls: A) -> A:
    """Class decorator: make an adapter available under ``cls.family``."""
    _ADAPTERS[cls.family] = cls
    return cls


def register_analysis(cls: A) -> A:
    """Class decorator: make an analysis available under ``cls.name``."""
    _ANALYSES[cls.name] = cls
    return cls


def _load_builtins() -> None:
    importlib.import_module("vidinterp.adapters")
    importlib.import_module("vidinterp.analyses")


def adapter_classes() -> dict[str, type["Adapter"]]:
    """Every registered adapter, by family name."""
    _load_builtins()
    return dict(_ADAPTERS)


def analysis_classes() -> dict[str, type["Analysis"]]:
    """Every registered analysis, by name."""
    _load_builtins()
    return dict(_ANALYSES)


def adapter_class(family: str) -> type["Adapter"]:
    adapters = adapter_classes()
    try:
        return adapters[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; supported families: {sorted(adapters)}") from None


def adapter_for(pipe) -> "Adapter":
    """The adapter instance for a diffusers pipeline, chosen by its transformer's class."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise TypeError(
            f"{type(pipe).__name__} has no `transformer` component; vidinterp supports "
            f"diffusers pipelines of the families {sorted(adapter_classes())}"
        )
    for cls in [*reversed(_PREFERRED), *adapter_classes().values()]:
        if cls.supports(transformer):
            return cls(pipe)
    supported = {family: cls.transformer_class_names for family, cls in adapter_classes().items()}
    raise TypeError(
        f"unsupported model class {type(transformer).__name__}; supported families and their "
        f"transformer classes: {supported}"
    )


@contextmanager
def using_adapter(cls: type["Adapter"]) -> Iterator[type["Adapter"]]:
    """Within the block, :func:`adapter_for` (so :func:`vidinterp.trace`, :func:`vidinterp.hooked`
    and the CLI) picks ``cls`` for every pipeline it supports, before the registered adapters.
    For adapters that are not registered (a third-party class under test, a variant of a
    built-in one) and for the conformance checks."""
    _PREFERRED.append(cls)
    try:
        yield cls
    finally:
        _PREFERRED.remove(cls)
