"""Model adapters, one file per family; importing this package registers them."""

from vidinterp.adapters import cogvideox

__all__ = ["cogvideox"]
