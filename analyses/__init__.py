"""Analyses, one file per method. Importing this package imports every module in it, and each
analysis registers itself (``@register_analysis``): adding a method is adding a file."""

import importlib
import pkgutil

from vidinterp.analyses.cross_attention import CrossAttention

__all__ = ["CrossAttention"] + [module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
