"""Model adapters, one file per family. Importing this package imports every module in it,
and each adapter registers itself (``@register_adapter``): adding a model is adding a file."""

import importlib
import pkgutil

__all__ = [module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")]

for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
