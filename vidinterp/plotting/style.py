"""Shared look of every vidinterp figure: colour scale, overlay opacity, marker palette, play speed.

The video/GIF export (:mod:`vidinterp.export`) uses the same :data:`DEFAULT_COLORSCALE`, so a map
looks the same in the interactive view and in an exported clip.
"""

from __future__ import annotations

__all__ = ["DEFAULT_COLORSCALE", "DEFAULT_OPACITY", "PALETTE", "FRAME_DURATION_MS", "SELECTED_COLOUR", "MAX_VIDEO_SIDE"]

#: Sequential, perceptually uniform plotly colour scale of map overlays: low values dark blue,
#: high values yellow, so the video under a half-transparent overlay stays readable.
DEFAULT_COLORSCALE = "Viridis"

#: Opacity of a map overlay over its video frame (0: video only, 1: map only).
DEFAULT_OPACITY = 0.5

#: Qualitative colours of markers and lines (concepts, points, layers), cycled.
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3")

#: Milliseconds per frame when the play button runs an animation.
FRAME_DURATION_MS = 150

#: Colour of the marks on selected layers and heads.
SELECTED_COLOUR = "#e6194b"

#: Longest side, in drawn pixels, of a video frame under maps, markers or tracks; longer frames are
#: drawn from block means (:func:`vidinterp.plotting.animation.frame_image`) to keep figures small.
MAX_VIDEO_SIDE = 256
