"""Analyses, one file per method; importing this package registers them."""

from vidinterp.analyses import cross_attention
from vidinterp.analyses.cross_attention import CrossAttention

__all__ = ["cross_attention", "CrossAttention"]
