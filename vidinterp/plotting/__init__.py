"""Plotly figures of traces: every figure a function here, and a method on :class:`vidinterp.Trace`
(docs/figures.md)."""

from vidinterp.plotting.animation import VideoFigure
from vidinterp.plotting.compact import compact_figure
from vidinterp.plotting.compare import comparison_panels, panel_scores, plot_comparison
from vidinterp.plotting.embeddings import head_embeddings, head_outputs, plot_head_embeddings
from vidinterp.plotting.heads import DEFAULT_SELECTION, head_scores, plot_head_scatter, plot_separation
from vidinterp.plotting.layers import lambda2_selection, plot_lambda2, plot_lambda2_steps
from vidinterp.plotting.localisation import HEAD_MAP_PREFIX, head_localisation, head_map_analyses, stack_head_maps
from vidinterp.plotting.overlays import INTERPOLATIONS, MAP_DIMS, SCALES, plot_maps, scale_maps, upsample_map
from vidinterp.plotting.qk import peak_positions, plot_qk_peaks
from vidinterp.plotting.static import FigureBundle, show, to_png
from vidinterp.plotting.style import DEFAULT_COLORSCALE, DEFAULT_OPACITY
from vidinterp.plotting.tracks import plot_tracks

__all__ = [
    "DEFAULT_COLORSCALE",
    "DEFAULT_OPACITY",
    "DEFAULT_SELECTION",
    "FigureBundle",
    "HEAD_MAP_PREFIX",
    "INTERPOLATIONS",
    "MAP_DIMS",
    "SCALES",
    "VideoFigure",
    "compact_figure",
    "comparison_panels",
    "head_embeddings",
    "head_outputs",
    "head_localisation",
    "head_map_analyses",
    "head_scores",
    "lambda2_selection",
    "panel_scores",
    "peak_positions",
    "plot_comparison",
    "plot_head_embeddings",
    "plot_head_scatter",
    "plot_lambda2",
    "plot_lambda2_steps",
    "plot_maps",
    "plot_qk_peaks",
    "plot_separation",
    "plot_tracks",
    "scale_maps",
    "show",
    "stack_head_maps",
    "to_png",
    "upsample_map",
]
