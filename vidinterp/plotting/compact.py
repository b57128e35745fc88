"""Plotly figures that draw the same but store less: for HTML reports and notebook outputs."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import plotly.graph_objects as go

from vidinterp.plotting.static import plotly_array

__all__ = ["compact_figure"]


def compact_figure(figure: go.Figure) -> go.Figure:
    """A copy of ``figure`` that draws the same but stores less: every ``go.Image`` given by a
    ``z`` pixel array (``uint8 [height, width, 3]``, colour model rgb) as a lossless PNG data URI in
    ``source``; every float64 array (heatmap ``z``, coordinates) as float32; animation frames
    without the traces that are the same in every frame as in the figure's initial data (the
    frames then name the traces they update, plotly's ``traces``)."""
    if not isinstance(figure, go.Figure):
        raise TypeError(f"compact_figure takes a plotly.graph_objects.Figure, got {type(figure).__name__}")
    plain = figure.to_plotly_json()
    data = [_compact_trace(trace) for trace in plain["data"]]
    frames = [dict(frame) for frame in plain.get("frames", [])]
    for frame in frames:
        frame["data"] = [_compact_trace(trace) for trace in frame.get("data", [])]
    frames = _without_still_traces(data, frames)
    return type(figure)(data=data, layout=plain["layout"], frames=frames)


def _compact_trace(trace: dict) -> dict:
    trace = dict(trace)
    if trace.get("type") == "image" and trace.get("z") is not None and trace.get("source") is None:
        pixels = plotly_array(trace.pop("z"))
        if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] == 3 and trace.get("colormodel") in (
                None, "rgb"):
            trace["source"] = _png_data_uri(pixels)
            trace.pop("colormodel", None)
        else:  # other colour models (alpha, hsl, float values) stay as they are
            trace["z"] = pixels
    return {key: _float32(value) for key, value in trace.items()}


def _float32(value: Any) -> Any:
    if isinstance(value, dict) and "bdata" in value:
        value = plotly_array(value)
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        return value.astype(np.float32)
    if isinstance(value, dict):
        return {key: _float32(item) for key, item in value.items()}
    return value


def _png_data_uri(pixels: np.ndarray) -> str:
    """``uint8 [height, width, 3]`` pixels as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _without_still_traces(data: list[dict], frames: list[dict]) -> list[dict]:
    """``frames`` without the traces that every frame shows exactly as ``data`` does (only for
    frames that update all traces in order, i.e. name no ``traces`` of their own)."""
    if not frames or any(frame.get("traces") is not None or len(frame["data"]) != len(data) for frame in frames):
        return frames
    encoded = [_json(trace) for trace in data]
    moving = [index for index, trace in enumerate(encoded)
              if any(_json(frame["data"][index]) != trace for frame in frames)]
    if len(moving) == len(data):
        return frames
    return [{**frame, "data": [frame["data"][index] for index in moving], "traces": moving} for frame in frames]


def _json(trace: dict) -> str:
    import plotly.io as pio

    return pio.to_json(trace, validate=False)
