"""What the tiny and planted pipeline registries share: importing the builtin family builders."""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["import_builtin_builders"]


def import_builtin_builders(prefix: str) -> None:
    """Import every module ``vidinterp.testing.<prefix><family>`` (``prefix`` ``"tiny_"`` or
    ``"planted_"``); each registers its family's builder when imported."""
    import vidinterp.testing as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith(prefix):
            importlib.import_module(f"vidinterp.testing.{module.name}")
