"""PaCMAP embeddings of each head's visual-token outputs, coloured by frame (IMAP paper Fig. 17).

A head whose outputs separate the latent frames (a "motion head", high Calinski-Harabasz score)
shows one cluster per frame; other heads mix the frames. :func:`head_embeddings` embeds, per
head, the outputs that the ``head_outputs`` analysis recorded (a seeded subsample of at most
``max_tokens_per_frame`` tokens per latent frame, see ``vidinterp.analyses.head_outputs``) with
the ``pacmap`` package; :func:`plot_head_embeddings` draws one scatter panel per head.

    trace = vidinterp.trace(pipe, video=clip, prompt=..., concepts=[...],
                            analyses=[HeadOutputs(), Separation()])
    plot_head_embeddings(head_embeddings(trace, layer=2))
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import xarray as xr

from vidinterp.plotting.style import DEFAULT_COLORSCALE

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vidinterp.results import Trace

__all__ = ["OUTPUT_DIMS", "TOKEN_COORDS", "head_outputs", "head_embeddings", "plot_head_embeddings"]

#: dims of head outputs as :func:`head_outputs` returns them
OUTPUT_DIMS = ("step", "layer", "head", "token", "channel")
#: coordinates of each token: latent frame, token row, token column
TOKEN_COORDS = ("frame", "y", "x")


def head_outputs(source: "Trace | xr.Dataset | xr.DataArray", name: str = "head_outputs") -> xr.DataArray:
    """Recorded head outputs with plain names: dims ``(step, layer, head, token, channel)``
    (``step`` optional) and coordinates ``frame``, ``y``, ``x`` along ``token``.

    Args:
        source: a :class:`~vidinterp.Trace` (its ``diagnostics``), a Dataset holding the variable
            ``name`` (as the analysis stores it: names prefixed ``<name>_``), or a DataArray
            with those dims and coordinates (prefixed or not).
        name: the analysis' name (``HeadOutputs.name``).

    Raises:
        KeyError: the source holds no variable ``name``.
        ValueError: dims or token coordinates missing.
    """
    if isinstance(source, xr.DataArray):
        variable = source
    else:
        dataset = source if isinstance(source, xr.Dataset) else source.diagnostics
        if name not in dataset.data_vars:
            raise KeyError(f"no head outputs {name!r} among {sorted(dataset.data_vars)}: trace with the "
                           f"'head_outputs' analysis (vidinterp.analyses.head_outputs.HeadOutputs)")
        variable = dataset[name]
    prefix = f"{name}_"
    renames = {key: str(key)[len(prefix):] for key in [*variable.dims, *variable.coords]
               if str(key).startswith(prefix)}
    variable = variable.rename(renames)
    missing = [dim for dim in OUTPUT_DIMS[1:] if dim not in variable.dims]
    missing += [coord for coord in TOKEN_COORDS if coord not in variable.coords or variable[coord].dims != ("token",)]
    extra = [dim for dim in variable.dims if dim not in OUTPUT_DIMS]
    if missing or extra:
        raise ValueError(f"head outputs must have dims {OUTPUT_DIMS} (step optional) and coordinates "
                         f"{TOKEN_COORDS} along 'token'; missing {missing}, unexpected dims {extra}")
    return variable


def _chosen(values: np.ndarray, wanted: int | None, what: str) -> int:
    available = [int(value) for value in values]
    if wanted is None:
        return available[-1]
    if int(wanted) not in available:
        raise ValueError(f"{what} {wanted} was not recorded; recorded {what}s: {available}")
    return int(wanted)


@contextmanager
def _quiet_pacmap() -> Iterator[None]:
    """pacmap logs a warning each time a random state is set (once per head): silence it."""
    logger = logging.getLogger("pacmap.pacmap")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def head_embeddings(
    source: "Trace | xr.Dataset | xr.DataArray",
    layer: int | None = None,
    step: int | None = None,
    heads: Sequence[int] | None = None,
    *,
    name: str = "head_outputs",
    n_components: int = 2,
    n_neighbors: int = 10,
    MN_ratio: float = 0.5,
    FP_ratio: float = 2.0,
    random_state: int = 0,
    **pacmap_kwargs: Any,
) -> xr.Dataset:
    """PaCMAP embedding of each head's outputs at one (layer, step), one fit per head.

    Args:
        source: see :func:`head_outputs`.
        layer, step: which recorded layer and step (default: the last recorded one of each).
        heads: heads to embed (default: all).
        n_components, n_neighbors, MN_ratio, FP_ratio: PaCMAP's own parameters (its defaults).
        random_state: PaCMAP's seed: the same inputs and seed give the same embedding.
            A head whose outputs are all equal is placed at the origin (PaCMAP cannot scale it).
        pacmap_kwargs: any other ``pacmap.PaCMAP`` argument (``num_iters``, ``lr``, ...).

    Returns:
        Dataset with ``embedding`` ``(head, token, component)`` float32 and the token
        coordinates ``frame``, ``y``, ``x``; ``separation_chi`` ``(head)`` when ``source`` is a
        trace that scored separation at that step and layer; attrs ``layer``, ``step`` and the
        PaCMAP parameters.

    Raises:
        ValueError: a layer, step or head that was not recorded, or fewer tokens than
            ``n_neighbors + 1``.
    """
    import pacmap

    outputs = head_outputs(source, name)
    layer = _chosen(outputs["layer"].values, layer, "layer")
    outputs = outputs.sel(layer=layer)
    if "step" in outputs.dims:
        step = _chosen(outputs["step"].values, step, "step")
        outputs = outputs.sel(step=step)
    elif step is not None:
        raise ValueError(f"step={step} given, but the head outputs have no step dim")
    chosen = [int(head) for head in outputs["head"].values] if heads is None else [int(head) for head in heads]
    recorded = [int(head) for head in outputs["head"].values]
    unknown = [head for head in chosen if head not in recorded]
    if unknown or not chosen:
        raise ValueError(f"heads {unknown or '(none given)'} not recorded; recorded heads: {recorded}")
    tokens = outputs.sizes["token"]
    if tokens <= n_neighbors:
        raise ValueError(f"PaCMAP needs more tokens than n_neighbors={n_neighbors}; the head outputs hold {tokens}: "
                         f"lower n_neighbors or record more tokens (max_tokens_per_frame)")
    parameters = {"n_components": n_components, "n_neighbors": n_neighbors, "MN_ratio": MN_ratio,
                  "FP_ratio": FP_ratio, "random_state": int(random_state), **pacmap_kwargs}
    points = []
    with _quiet_pacmap():
        for head in chosen:
            values = outputs.sel(head=head).transpose("token", "channel").values.astype(np.float32)
            if np.ptp(values) == 0:  # a constant head has no structure (and pacmap's scaling divides by 0)
                points.append(np.zeros((tokens, n_components), dtype=np.float32))
            else:
                points.append(pacmap.PaCMAP(**parameters).fit_transform(values, init="pca").astype(np.float32))
    coords = {"head": chosen, "token": outputs["token"].values, "component": list(range(n_components)),
              **{coord: ("token", outputs[coord].values) for coord in TOKEN_COORDS}}
    dataset = xr.Dataset({"embedding": (("head", "token", "component"), np.stack(points))}, coords=coords)
    chi = _separation_chi(source, layer, step)
    if chi is not None:
        dataset["separation_chi"] = ("head", chi.sel(head=chosen).values.astype(np.float32))
    dataset.attrs = {"layer": layer, **({"step": step} if step is not None else {}),
                     **{f"pacmap.{key}": value for key, value in parameters.items() if np.isscalar(value)}}
    return dataset


def _separation_chi(source: Any, layer: int, step: int | None) -> xr.DataArray | None:
    """``separation_chi`` ``(head)`` of a trace at (step, layer), or ``None`` where not scored."""
    heads = getattr(source, "heads", None)
    if not isinstance(heads, xr.Dataset) or "separation_chi" not in heads.data_vars:
        return None
    chi = heads["separation_chi"]
    if layer not in chi["layer"].values or (step is not None and step not in chi["step"].values):
        return None
    return chi.sel(layer=layer, step=step) if step is not None else chi.sel(layer=layer).mean("step")


def plot_head_embeddings(embeddings: xr.Dataset, cols: int = 4, *, colorscale: str = DEFAULT_COLORSCALE,
                         marker_size: int = 4, cell_size: int = 260) -> "go.Figure":
    """Grid of scatter panels, one per head, of :func:`head_embeddings`' first two components,
    points coloured by latent frame (one shared colour bar); hovering a point shows its frame,
    token row and column. Panel titles give the head and, when the embeddings carry it, its
    separation score (``CHI``), so well-separated heads stand out.

    Raises:
        ValueError: ``embeddings`` lacks ``embedding`` (head, token, component >= 2) or the
            token coordinates, or ``cols < 1``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    if "embedding" not in embeddings.data_vars or embeddings["embedding"].dims != ("head", "token", "component") \
            or embeddings.sizes["component"] < 2 or any(coord not in embeddings.coords for coord in TOKEN_COORDS):
        raise ValueError("expected head_embeddings' Dataset: 'embedding' (head, token, component >= 2) with token "
                         f"coordinates {TOKEN_COORDS}")
    heads = [int(head) for head in embeddings["head"].values]
    chi = embeddings["separation_chi"].values if "separation_chi" in embeddings.data_vars else None
    titles = [f"head {head}" + (f" · CHI {chi[i]:.3g}" if chi is not None else "") for i, head in enumerate(heads)]
    cols = min(cols, len(heads))
    rows = math.ceil(len(heads) / cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                           vertical_spacing=0.08 if rows > 1 else 0.0)
    frame = embeddings["frame"].values
    hover = np.stack([frame, embeddings["y"].values, embeddings["x"].values], axis=1)
    for index, head in enumerate(heads):
        points = embeddings["embedding"].sel(head=head).values
        figure.add_trace(go.Scattergl(
            x=points[:, 0], y=points[:, 1], mode="markers", name=f"head {head}", showlegend=False,
            customdata=hover,
            hovertemplate="frame %{customdata[0]}<br>y %{customdata[1]}, x %{customdata[2]}<extra></extra>",
            marker={"color": frame, "colorscale": colorscale, "cmin": int(frame.min()), "cmax": int(frame.max()),
                    "size": marker_size, "showscale": index == 0,
                    "colorbar": {"title": {"text": "frame"}, "dtick": 1}},
        ), row=index // cols + 1, col=index % cols + 1)
    layer, step = embeddings.attrs.get("layer"), embeddings.attrs.get("step")
    title = "PaCMAP of head outputs by frame" + (f", layer {layer}" if layer is not None else "") + (
        f", step {step}" if step is not None else "")
    figure.update_layout(title=title, height=cell_size * rows + 80, width=cell_size * cols + 120,
                         margin={"l": 10, "r": 10, "t": 60, "b": 10})
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    return figure
