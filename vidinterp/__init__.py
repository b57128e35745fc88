"""vidinterp: see where and when a video diffusion transformer represents a concept.

>>> import vidinterp
>>> trace = vidinterp.trace(pipe, video="clip.mp4", concepts=["dog", "walking"])
>>> trace.maps            # xarray.Dataset (concept, frame, y, x), one variable per method
"""

from vidinterp.analysis import Analysis
from vidinterp.context import TraceContext
from vidinterp.layout import TokenLayout
from vidinterp.registry import adapter_classes, adapter_for, analysis_classes
from vidinterp.results import Trace
from vidinterp.sites import SiteGraph, SiteSpec, SiteVisit
from vidinterp.graph import hooked, list_sites
from vidinterp.inputs import load_pipeline
from vidinterp.trace import default_analyses, trace
from vidinterp.interventions import CrossFrameGuidance, Intervention
from vidinterp.tracking import track

__version__ = "0.1.0"


#: Subpackages imported on first attribute use: ``vidinterp.zoo`` (trained models, installed from
#: the top-level ``zoo/`` folder; it builds model-specific pipelines, so the core never imports it
#: eagerly), and the figure, dataset and evaluation layers, which ``import vidinterp`` need not load.
_LAZY_SUBPACKAGES = ("zoo", "plotting", "datasets", "evaluation")


def __getattr__(name: str):
    """``vidinterp.<subpackage>`` of :data:`_LAZY_SUBPACKAGES`, imported on first use."""
    if name in _LAZY_SUBPACKAGES:
        import importlib

        return importlib.import_module(f"vidinterp.{name}")
    raise AttributeError(f"module 'vidinterp' has no attribute {name!r}")


__all__ = [
    "trace",
    "track",
    "hooked",
    "list_sites",
    "load_pipeline",
    "default_analyses",
    "CrossFrameGuidance",
    "Intervention",
    "Trace",
    "Analysis",
    "TraceContext",
    "TokenLayout",
    "SiteGraph",
    "SiteSpec",
    "SiteVisit",
    "adapter_for",
    "adapter_classes",
    "analysis_classes",
]
