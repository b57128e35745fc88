"""lambda2 layer scores (IMAP paper, Fig. 3): per layer, and over denoising steps, with the
selection threshold and the selected layers.

A layer's score is the mean ``|lambda2|`` over its heads (and analysed steps), as
:class:`~vidinterp.analyses.lambda2.Lambda2` computes ``lambda2_layer``; a layer is selected
when its score is strictly above the threshold, the rule of
:class:`~vidinterp.analyses.lambda2.Lambda2Layers`.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from vidinterp.model_cards import lambda2_threshold
from vidinterp.plotting.style import PALETTE, SELECTED_COLOUR

__all__ = ["plot_lambda2", "plot_lambda2_steps", "lambda2_selection"]

Calibration = Mapping[str, Any] | str | os.PathLike


def _lambda2(layers: xr.Dataset) -> xr.DataArray:
    if "lambda2" not in layers.data_vars:
        raise ValueError(f"no 'lambda2' variable (step, layer, head) in the layers Dataset (variables: "
                         f"{list(layers.data_vars)}); run vidinterp.analyses.lambda2.Lambda2() in the trace")
    return layers["lambda2"].transpose("step", "layer", "head")


def _calibration(calibration: Calibration | None, layers: xr.Dataset) -> Mapping[str, Any]:
    """The calibration given, else the one the trace recorded beside ``lambda2_layer`` (its
    threshold only when the trace had a calibrated one)."""
    if calibration is None:
        attrs = layers["lambda2_layer"].attrs if "lambda2_layer" in layers else {}
        recorded: dict[str, Any] = {}
        if attrs.get("threshold_source") == "trace calibration":
            recorded["lambda2_threshold"] = float(attrs["threshold"])
        if "calibration_layers" in attrs:
            recorded["lambda2"] = dict(zip(np.atleast_1d(attrs["calibration_layers"]).tolist(),
                                           np.atleast_1d(attrs["calibration_scores"]).tolist()))
        return recorded
    if isinstance(calibration, Mapping):
        return calibration
    from vidinterp.calibration import load_calibration

    return load_calibration(calibration)


def lambda2_selection(layers: xr.Dataset, *, threshold: float | None = None,
                      calibration: Calibration | None = None) -> tuple[float, str, list[int]]:
    """``(threshold, source, selected layers)`` as :class:`~vidinterp.analyses.lambda2.Lambda2Layers`
    resolves them.

    The threshold is ``threshold`` when given, else the calibration's ``"lambda2_threshold"``
    (default calibration: the one the trace recorded in ``lambda2_layer``'s attrs, i.e. the
    pipeline's ``vidinterp_calibration``),
    else the IMAP paper's value for the model family (``layers.attrs["model"]``,
    :func:`vidinterp.model_cards.lambda2_threshold`); ``source`` says which. Selected layers score
    strictly above it: by the calibration's ``"lambda2"`` layer scores when it has them (what
    the trace's IMAP selected), else by the Dataset's own ``lambda2`` mean over heads and steps.

    Args:
        layers: ``Trace.layers`` with ``lambda2`` ``(step, layer, head)``.
        calibration: ``pipe.vidinterp_calibration`` (a dict as
            :func:`~vidinterp.calibration.load_calibration` returns) or a layer-score JSON file.
    """
    values = _lambda2(layers)
    stored = _calibration(calibration, layers)
    if threshold is not None:
        threshold, source = float(threshold), "given"
    elif "lambda2_threshold" in stored:
        threshold, source = float(stored["lambda2_threshold"]), "calibrated"
    else:
        model = str(layers.attrs.get("model", ""))
        threshold, source = lambda2_threshold(model), f"paper value for {model or 'an unnamed model'}"
    if "lambda2" in stored:
        scores = {int(layer): float(score) for layer, score in stored["lambda2"].items()}
    else:
        means = values.mean(dim=("step", "head"), skipna=True)
        scores = {int(layer): float(score) for layer, score in zip(means.layer.values, means.values)}
    return threshold, source, sorted(layer for layer, score in scores.items() if score > threshold)


def plot_lambda2(layers: xr.Dataset, *, threshold: float | None = None, calibration: Calibration | None = None,
                 selected: Iterable[int] | None = None) -> go.Figure:
    """``|lambda2|`` per layer: a box and every head's point (each head's mean over analysed
    steps), the layer score (mean over heads) as a line, the calibration's layer scores when a
    calibration is given, the threshold as a dashed horizontal line and the selected layers as
    stars on their scores and shaded columns.

    Args:
        layers: ``Trace.layers`` with ``lambda2`` ``(step, layer, head)``.
        threshold, calibration: see :func:`lambda2_selection`.
        selected: layers to mark instead of :func:`lambda2_selection`'s.

    Returns:
        A ``go.Figure``; traces are named ``"heads"`` (box), ``"layer mean"``, ``"calibration"``
        (with calibration scores) and ``"selected layers"``; the threshold is the layout shape
        of type ``"line"``.

    Raises:
        ValueError: no ``lambda2`` variable.
    """
    values = _lambda2(layers)
    threshold, source, chosen = lambda2_selection(layers, threshold=threshold, calibration=calibration)
    chosen = sorted(int(layer) for layer in (chosen if selected is None else selected))
    per_head = values.mean(dim="step", skipna=True)  # (layer, head)
    layer_ids = per_head.layer.values.astype(int)
    means = per_head.mean(dim="head", skipna=True).values
    figure = go.Figure()
    figure.add_trace(go.Box(
        x=np.repeat(layer_ids, per_head.sizes["head"]), y=per_head.values.ravel(), name="heads", boxpoints="all",
        jitter=0.3, pointpos=0, marker={"color": PALETTE[3], "size": 5}, line={"color": PALETTE[3]},
        customdata=np.tile(per_head["head"].values, len(layer_ids)),
        hovertemplate="layer %{x} head %{customdata}<br>|lambda2| %{y:.3f}<extra></extra>"))
    figure.add_trace(go.Scatter(x=layer_ids, y=means, mode="lines+markers", name="layer mean",
                                line={"color": "black"}, hovertemplate="layer %{x}<br>mean %{y:.3f}<extra></extra>"))
    stored = _calibration(calibration, layers)
    if "lambda2" in stored:
        calibrated = sorted((int(layer), float(score)) for layer, score in stored["lambda2"].items())
        figure.add_trace(go.Scatter(x=[layer for layer, _ in calibrated], y=[score for _, score in calibrated],
                                    mode="markers", name="calibration", marker={"symbol": "diamond", "size": 9,
                                                                                "color": PALETTE[4]}))
    marked = {int(layer): float(mean) for layer, mean in zip(layer_ids, means)}
    figure.add_trace(go.Scatter(
        x=chosen, y=[marked.get(layer, threshold) for layer in chosen], mode="markers", name="selected layers",
        marker={"symbol": "star", "size": 14, "color": SELECTED_COLOUR}))
    for layer in chosen:
        figure.add_vrect(x0=layer - 0.45, x1=layer + 0.45, fillcolor=SELECTED_COLOUR, opacity=0.08, line_width=0)
    figure.add_hline(y=threshold, line={"dash": "dash", "color": SELECTED_COLOUR},
                     annotation_text=f"threshold {threshold:.4g} ({source})", annotation_position="top left")
    figure.update_layout(title=f"|lambda2| per layer; selected: {chosen}", xaxis_title="layer",
                         yaxis_title="|lambda2|", xaxis={"tickmode": "array", "tickvals": layer_ids.tolist()},
                         width=max(420, 40 * len(layer_ids) + 200), height=420)
    return figure


def plot_lambda2_steps(layers: xr.Dataset, *, threshold: float | None = None,
                       calibration: Calibration | None = None) -> go.Figure:
    """``|lambda2|`` over denoising steps: one line per layer (mean over heads at each analysed
    schedule index; hovering shows its lowest and highest head), and the threshold
    (:func:`lambda2_selection`) as a dashed line. The selected layers' lines are solid, the
    others dotted.

    Returns:
        A ``go.Figure`` with one trace per layer, named ``"layer {l}"``; x is the schedule index.

    Raises:
        ValueError: no ``lambda2`` variable.
    """
    values = _lambda2(layers)
    threshold, source, chosen = lambda2_selection(layers, threshold=threshold, calibration=calibration)
    steps = values.step.values
    figure = go.Figure()
    for index, layer in enumerate(values.layer.values.astype(int)):
        per_step = values.sel(layer=layer)
        low, high = per_step.min(dim="head").values, per_step.max(dim="head").values
        figure.add_trace(go.Scatter(
            x=steps, y=per_step.mean(dim="head").values, mode="lines+markers", name=f"layer {layer}",
            line={"color": PALETTE[index % len(PALETTE)], "dash": "solid" if layer in chosen else "dot"},
            customdata=np.stack([low, high], axis=-1),
            hovertemplate=f"layer {layer}, step %{{x}}<br>mean %{{y:.3f}} (heads %{{customdata[0]:.3f}}.."
                          f"%{{customdata[1]:.3f}})<extra></extra>"))
    figure.add_hline(y=threshold, line={"dash": "dash", "color": SELECTED_COLOUR},
                     annotation_text=f"threshold {threshold:.4g} ({source})", annotation_position="top left")
    figure.update_layout(title="|lambda2| over denoising steps (mean over heads)", xaxis_title="schedule index",
                         yaxis_title="|lambda2|", width=640, height=420)
    return figure
