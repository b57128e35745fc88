"""Per-head figures: separation scores per layer x head with the selected heads marked, and a
head's separation score against how well its own map localises (IMAP paper, Fig. 5)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots
from scipy import stats

from vidinterp.plotting.style import DEFAULT_COLORSCALE, PALETTE, SELECTED_COLOUR

__all__ = ["plot_separation", "plot_head_scatter", "head_scores", "DEFAULT_SELECTION"]

#: The selection ``plot_separation(selected="auto")`` marks when the Dataset has it.
DEFAULT_SELECTION = "imap_selected_heads"


def _score_name(heads: xr.Dataset, score: str) -> str:
    for name in (score, f"separation_{score}"):
        if name in heads.data_vars:
            return name
    raise ValueError(f"no score {score!r} in the heads Dataset; its variables are {list(heads.data_vars)} "
                     f"(vidinterp.analyses.separation.Separation writes separation_<score>)")


def head_scores(heads: xr.Dataset, score: str, step: int | None = None) -> xr.DataArray:
    """One per-head variable as ``(layer, head)``: ``score`` is a variable name or a separation
    score name (``"chi"`` for ``separation_chi``); with a ``step`` dim it is averaged over the
    analysed steps (NaN skipped), or taken at schedule index ``step``.

    Raises:
        ValueError: no such variable, no such step, or dims other than ``([step,] layer, head)``.
    """
    variable = heads[_score_name(heads, score)]
    if "step" in variable.dims:
        if step is None:
            variable = variable.mean(dim="step", skipna=True, keep_attrs=True)
        elif step not in variable.step.values:
            raise ValueError(f"step {step!r} was not analysed; the steps are {variable.step.values.tolist()}")
        else:
            variable = variable.sel(step=step)
    if set(variable.dims) != {"layer", "head"}:
        raise ValueError(f"{variable.name!r} has dims {variable.dims}; expected (step, layer, head) or (layer, head)")
    return variable.transpose("layer", "head")


def _selection(heads: xr.Dataset, selected: str | None, step: int | None) -> tuple[np.ndarray, int] | None:
    """``(count [layer, head] of analysed steps at which each head was selected, steps)``."""
    if selected == "auto":
        selected = DEFAULT_SELECTION if DEFAULT_SELECTION in heads.data_vars else None
    if selected is None:
        return None
    if selected not in heads.data_vars:
        choices = [name for name in heads.data_vars if name.endswith("_selected_heads")]
        raise ValueError(f"no selection {selected!r} in the heads Dataset; selections there: {choices}")
    # a bool (step, layer, head) variable; NaN where its analysis did not visit a layer
    chosen = heads[selected]
    if "step" not in chosen.dims:
        chosen = chosen.expand_dims(step=[0])
    elif step is not None:
        if step not in chosen.step.values:
            raise ValueError(f"step {step!r} was not analysed; the steps are {chosen.step.values.tolist()}")
        chosen = chosen.sel(step=[step])
    hits = np.asarray(chosen.transpose("step", "layer", "head").values, dtype=np.float64) > 0.5
    return hits.sum(axis=0), hits.shape[0]


def plot_separation(heads: xr.Dataset, scores: Iterable[str] | None = None, *, selected: str | None = "auto",
                    step: int | None = None, colorscale: str = DEFAULT_COLORSCALE) -> go.Figure:
    """Separation scores as layer x head heatmaps, one panel per score, with a square around
    every selected head.

    Args:
        heads: ``Trace.heads``.
        scores: variables to show, by name or score name (``"chi"``); default every
            ``separation_<score>`` variable. Any ``([step,] layer, head)`` variable works.
        selected: a bool ``(step, layer, head)`` selection variable to mark (a head is marked
            when selected at any shown step; hover gives the count); ``"auto"``:
            :data:`DEFAULT_SELECTION` when present; ``None``: no marks.
        step: schedule index to show; default the mean over analysed steps.
        colorscale: sequential colour scale; reversed for scores whose ``higher_is_better``
            attr is 0 (Davies-Bouldin), so the better heads are always the bright ones.

    Returns:
        A ``go.Figure``: per panel a ``go.Heatmap`` (x head, y layer, layer 0 at the top) and,
        with a selection, a ``go.Scatter`` named ``"selected"`` at the marked (head, layer) cells.

    Raises:
        ValueError: no separation scores, an unknown score or selection, or a step not analysed.
    """
    names = ([name for name in heads.data_vars if str(name).startswith("separation_")] if scores is None
             else [_score_name(heads, score) for score in scores])
    if not names:
        raise ValueError(f"no separation scores in the heads Dataset (variables: {list(heads.data_vars)}); run "
                         f"vidinterp.analyses.separation.Separation() in the trace")
    marks = _selection(heads, selected, step)
    titles = []
    for name in names:
        better = heads[name].attrs.get("higher_is_better")
        titles.append(str(name).removeprefix("separation_")
                      + ("" if better is None else " (higher is better)" if int(better) else " (lower is better)"))
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.12)
    for column, name in enumerate(names, start=1):
        values = head_scores(heads, name, step)
        layer_ids, head_ids = values.layer.values, values["head"].values
        domain = figure.layout[f"xaxis{'' if column == 1 else column}"].domain
        figure.add_trace(go.Heatmap(
            z=values.values, x=head_ids, y=layer_ids, colorscale=colorscale,
            reversescale=not int(values.attrs.get("higher_is_better", 1)),
            colorbar={"x": domain[1] + 0.01, "len": 0.9, "thickness": 10},
            hovertemplate=f"{name}<br>layer %{{y}} head %{{x}}<br>%{{z:.4g}}<extra></extra>"), row=1, col=column)
        if marks is not None:
            counts, total = marks
            layer_index, head_index = np.nonzero(counts)
            figure.add_trace(go.Scatter(
                x=head_ids[head_index], y=layer_ids[layer_index], mode="markers", name="selected",
                showlegend=column == 1, legendgroup="selected",
                marker={"symbol": "square-open", "size": 18, "color": SELECTED_COLOUR, "line": {"width": 3}},
                customdata=counts[layer_index, head_index],
                hovertemplate=f"selected at %{{customdata}} of {total} steps<br>layer %{{y}} head %{{x}}"
                              "<extra></extra>"),
                row=1, col=column)
        figure.update_xaxes(title_text="head", tickmode="array", tickvals=head_ids.tolist(), row=1, col=column)
        figure.update_yaxes(title_text="layer" if column == 1 else None, autorange="reversed", row=1, col=column)
    shown = "mean over analysed steps" if step is None else f"step {step}"
    figure.update_layout(title=f"separation scores per head ({shown})", width=330 * len(names) + 100, height=460,
                         legend={"orientation": "h", "y": -0.15})
    return figure


def plot_head_scatter(heads: xr.Dataset, localisation: xr.DataArray, *, score: str = "chi",
                      step: int | None = None) -> go.Figure:
    """One point per head: its separation ``score`` (x) against its ``localisation`` (y), with
    the Pearson and Spearman correlations over heads in the title (and in
    ``figure.layout.meta``: ``{"pearson", "spearman", "heads"}``).

    Args:
        heads: ``Trace.heads`` (``score`` is read with :func:`head_scores`).
        localisation: ``(layer, head)`` per-head localisation, e.g. the motion IoU of each
            head's own map (:func:`vidinterp.plotting.head_localisation`).
        score, step: which separation score, and which step (default: mean over steps).

    Heads are matched by their ``layer``/``head`` coordinates; heads where either value is NaN
    are left out.

    Raises:
        ValueError: ``localisation`` is not ``(layer, head)``, or fewer than 3 heads have both values.
    """
    if set(localisation.dims) != {"layer", "head"}:
        raise ValueError(f"localisation must have dims (layer, head), got {localisation.dims}")
    separation = head_scores(heads, score, step)
    separation, located = xr.align(separation, localisation.transpose("layer", "head"), join="inner")
    x, y = separation.values.ravel(), located.values.ravel()
    layer_ids = np.repeat(separation.layer.values, separation.sizes["head"])
    head_ids = np.tile(separation["head"].values, separation.sizes["layer"])
    valid = np.isfinite(x) & np.isfinite(y)
    if valid.sum() < 3:
        raise ValueError(f"a correlation needs at least 3 heads with both a score and a localisation, got "
                         f"{int(valid.sum())} (layers/heads are matched by coordinate)")
    x, y, layer_ids, head_ids = x[valid], y[valid], layer_ids[valid], head_ids[valid]
    pearson, spearman = float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])
    label_x = str(separation.name).removeprefix("separation_")
    label_y = str(localisation.name or "localisation")
    figure = go.Figure()
    for index, layer in enumerate(np.unique(layer_ids)):
        rows = layer_ids == layer
        figure.add_trace(go.Scatter(
            x=x[rows], y=y[rows], mode="markers", name=f"layer {layer}", customdata=head_ids[rows],
            marker={"color": PALETTE[index % len(PALETTE)], "size": 9},
            hovertemplate=f"layer {layer} head %{{customdata}}<br>{label_x} %{{x:.4g}}<br>{label_y} %{{y:.3f}}"
                          "<extra></extra>"))
    figure.update_layout(
        title=f"{label_x} vs {label_y}: Pearson r = {pearson:.3f}, Spearman ρ = {spearman:.3f} ({len(x)} heads)",
        xaxis_title=label_x, yaxis_title=label_y, width=640, height=460,
        meta={"pearson": pearson, "spearman": spearman, "heads": int(len(x))})
    return figure
