"""Several traces or methods side by side on the same frames, for Jupyter (docs/comparison.md).

:func:`plot_comparison` draws one panel per item, each the item's map over the video, with

* **one frame slider** shared by every panel: latent (token) frame ``f`` shows the last pixel
  frame of its span under that frame's map (``"latent 2 · px 8"``);
* a **concept dropdown**: every panel switches to that concept's maps;
* **one dropdown per other dim** the items carry (a Trace's several methods as ``variant``, an
  ablation's ``k`` or ``variant``, ``step``, ``layer``...): it switches the panels that carry
  that dim and leaves the others;
* with ``ground_truth``, each panel's **scores** in its title (:func:`panel_scores`).

The controls compose (choose a concept, then a ``k``, then move the slider) because each acts on
its own part of the figure: each panel draws all of its frames side by side in one strip (the
video frames and the maps at token resolution) and the slider only moves every panel's x axis
to frame ``f``'s window (``relayout``); the concept dropdown replaces the strips' values
(``restyle`` of ``z``); another dim's dropdown shows one strip per panel (``visible``) and
updates its title. Maps are min-max scaled as :func:`~vidinterp.plotting.scale_maps` does
(``scale="frame"`` by default; ``None`` draws raw values), each panel and dim value on its own.
Coordinates follow the video figures' convention: pixel column ``c`` of frame ``f`` covers
``[f W + c, f W + c + 1)``, a token cell the pixels it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import xarray as xr

from vidinterp.datasets.shapes import ShapesGroundTruth
from vidinterp.datasets.scoring import score_maps
from vidinterp.metrics import binarize_at_mean, foreground_background_miou, upsample_nearest
from vidinterp.plotting.animation import checked_video
from vidinterp.plotting.overlays import MAP_DIMS, SCALES, scale_maps
from vidinterp.plotting.style import DEFAULT_COLORSCALE, DEFAULT_OPACITY
from vidinterp.results import Trace

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Item", "GroundTruth", "SHAPES_SCORES", "comparison_panels", "panel_scores", "plot_comparison"]

#: what :func:`plot_comparison` compares: a trace (its maps), a Dataset of maps or one map
Item = Union[Trace, xr.DataArray, xr.Dataset]
#: a shapes clip's exact ground truth, or ``{concept: bool [frames, height, width]}`` pixel masks
GroundTruth = Union[ShapesGroundTruth, Mapping[str, np.ndarray]]
#: the :func:`~vidinterp.datasets.scoring.score_maps` metrics a panel title shows, with their labels
SHAPES_SCORES = {"object_miou": "object mIoU", "motion_iou": "motion IoU", "auroc_2obj": "AUROC (2 obj)"}


def _maps_of(dataset: xr.Dataset, what: str) -> xr.DataArray:
    """The maps of a Dataset: its ``maps`` variable (``ablation_maps``), its one map variable,
    or its map variables stacked along a ``variant`` dim."""
    if "maps" in dataset.data_vars:
        return dataset["maps"]
    names = [name for name in dataset.data_vars if set(MAP_DIMS) <= set(dataset[name].dims)]
    if not names:
        raise ValueError(f"{what} holds no {MAP_DIMS} maps; its variables are {list(dataset.data_vars)}")
    if len(names) == 1:
        return dataset[names[0]]
    return xr.concat([dataset[name].drop_attrs() for name in names], dim="variant", coords="minimal",
                     compat="override", join="exact").assign_coords(variant=names)


def comparison_panels(items: Mapping[str, Item] | xr.Dataset | xr.DataArray) -> dict[str, xr.DataArray]:
    """``{panel title: maps}``, each with the dims ``(concept, frame, y, x)`` and at most one
    other dim. ``items`` maps titles to traces (their ``maps``; several methods become a
    ``variant`` dim), Datasets (their ``maps`` variable, their one map, or their maps along
    ``variant``) or DataArrays; a single Dataset or DataArray with a ``variant`` dim (e.g.
    :func:`vidinterp.ablations.ablation_maps`) gives one panel per method.

    Raises:
        ValueError: no items, an item without ``(concept, frame, y, x)`` maps, or one with two
            or more other dims (``.sel()`` or ``.stack()`` them first).
        TypeError: an item of another type.
    """
    if isinstance(items, (xr.Dataset, xr.DataArray)):
        maps = _maps_of(items, "items") if isinstance(items, xr.Dataset) else items
        if "variant" not in maps.dims:
            raise ValueError(f"a single Dataset or DataArray needs a 'variant' dim to split into panels; it has "
                             f"{maps.dims}: pass {{title: item}} instead")
        items = {str(variant): maps.sel(variant=variant, drop=True) for variant in maps["variant"].values}
    if not items:
        raise ValueError("nothing to compare: give at least one {title: trace, Dataset or DataArray}")
    panels = {}
    for title, item in items.items():
        if isinstance(item, Trace):
            maps = _maps_of(item.maps, f"trace {title!r}")
        elif isinstance(item, xr.Dataset):
            maps = _maps_of(item, f"item {title!r}")
        elif isinstance(item, xr.DataArray):
            maps = item
        else:
            raise TypeError(f"item {title!r} is a {type(item).__name__}; expected a Trace, an xarray Dataset or "
                            f"DataArray")
        missing = [dim for dim in MAP_DIMS if dim not in maps.dims]
        extra = [dim for dim in maps.dims if dim not in MAP_DIMS]
        if missing or len(extra) > 1:
            raise ValueError(f"item {title!r} has dims {maps.dims}: expected {MAP_DIMS} and at most one other dim "
                             f"(missing {missing}, others {extra}; .sel() or .stack() the others first)")
        panels[str(title)] = maps.transpose(*extra, *MAP_DIMS)
    return panels


def _video_of(items: Any) -> np.ndarray | None:
    sources = [items] if isinstance(items, (xr.Dataset, xr.DataArray)) else items.values()
    for item in sources:
        if isinstance(item, Trace) and item.video is not None:
            return item.video
        if isinstance(item, xr.Dataset) and "video" in item.data_vars:
            return item["video"].values
    return None


def panel_scores(maps: xr.DataArray, ground_truth: GroundTruth,
                 concepts: Sequence[str] | None = None) -> dict[str, float]:
    """Scores of one method's maps ``(concept, frame, y, x)`` against ground truth, by label.

    * a :class:`~vidinterp.datasets.shapes.ShapesGroundTruth`: the mean over concepts of each
      :data:`SHAPES_SCORES` metric of :func:`~vidinterp.datasets.scoring.score_maps` that has
      samples (object mIoU for nouns and colours, motion IoU for directions, AUROC on two
      objects);
    * ``{concept: bool [frames, height, width]}``: ``"mIoU"``, foreground/background mIoU of
      each frame's map binarised at its mean (:func:`~vidinterp.metrics.binarize_at_mean`, map
      upsampled to the mask by nearest cells), averaged over frames, then over the concepts
      that have a mask. Masks have the map's frames, or the video's pixel frames (then the last
      pixel frame of each latent frame, ``pixel_frame_last``, is scored).

    Raises:
        ValueError: maps that do not fit the ground truth's frames or pixel size.
    """
    concepts = [str(concept) for concept in (maps["concept"].values if concepts is None else concepts)]
    values = maps.sel(concept=concepts).transpose(*MAP_DIMS).values.astype(np.float64)
    if isinstance(ground_truth, ShapesGroundTruth):
        samples = score_maps(ground_truth, concepts, values)
        return {label: float(np.mean(samples[metric])) for metric, label in SHAPES_SCORES.items() if samples[metric]}
    per_concept = []
    for index, concept in enumerate(concepts):
        if concept not in ground_truth:
            continue
        masks = np.asarray(ground_truth[concept], dtype=bool)
        frames = maps.sizes["frame"]
        if masks.ndim != 3:
            raise ValueError(f"mask of {concept!r} must be bool [frames, height, width], got shape {masks.shape}")
        if len(masks) != frames:
            if "pixel_frame_last" not in maps.coords or int(maps["pixel_frame_last"].max()) >= len(masks):
                raise ValueError(f"mask of {concept!r} has {len(masks)} frames; the maps have {frames} latent frames "
                                 f"(and no pixel_frame_last spans inside the mask's frames)")
            masks = masks[maps["pixel_frame_last"].values]
        pixels = upsample_nearest(values[index], *masks.shape[1:])
        per_concept.append(np.mean([foreground_background_miou(binarize_at_mean(pixels[f]), masks[f])
                                    for f in range(frames)]))
    return {"mIoU": float(np.mean(per_concept))} if per_concept else {}


def _strip(maps: np.ndarray) -> np.ndarray:
    """One panel's maps ``[F, h, w]`` -> ``[h, F * w]``, frames side by side."""
    return np.concatenate(list(maps), axis=1)


def plot_comparison(
    items: Mapping[str, Item] | xr.Dataset | xr.DataArray,
    video: np.ndarray | None = None,
    *,
    ground_truth: GroundTruth | None = None,
    concepts: Sequence[str] | None = None,
    scale: str | None = "frame",
    colorscale: str = DEFAULT_COLORSCALE,
    opacity: float = DEFAULT_OPACITY,
    cols: int | None = None,
    cell_size: int = 300,
) -> "go.Figure":
    """Items side by side on the same frames with a shared frame slider and dropdowns (module
    docstring).

    Args:
        items: ``{title: Trace | Dataset | DataArray}`` or one Dataset/DataArray with a
            ``variant`` dim (see :func:`comparison_panels`).
        video: ``uint8 [pixel_frames, height, width, 3]`` under the maps (default: the first
            trace's video, or an ``ablation_maps`` Dataset's ``video``); without one the maps
            are drawn alone, one token per unit.
        ground_truth: scores each panel (and each value of its other dim) in its title, see
            :func:`panel_scores`.
        concepts: concepts to offer (default: those every item has, in the first item's order).
        scale: ``"frame"``, ``"concept"``, ``"global"`` min-max scaling or ``None`` (raw values).
        colorscale, opacity: of the maps (opacity applies over a video).
        cols: panels per row (default: all in one row, at most 4).
        cell_size: height of one panel in screen pixels.

    Returns:
        A plotly Figure. Traces, per panel: the video strip (``go.Image``, with a video), then
        one map strip (``go.Heatmap``) per value of the panel's other dim. ``layout.sliders[0]``
        relayouts every panel's x axis; ``layout.updatemenus[0]`` is the concept dropdown (one
        ``restyle`` of ``z`` per concept, over every map strip), then one per other dim.

    Raises:
        ValueError: items whose frame counts differ, no shared concept, a bad ``scale``,
            ``opacity`` or ``cols``, or a video that is not ``uint8 [frames, H, W, 3]``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = comparison_panels(items)
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES} or None (raw values), got {scale!r}")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")
    frame_counts = {title: maps.sizes["frame"] for title, maps in panels.items()}
    if len(set(frame_counts.values())) != 1:
        raise ValueError(f"items must share their frames for one slider; latent frames per item: {frame_counts}")
    frames = next(iter(frame_counts.values()))
    first = next(iter(panels.values()))
    shared = [str(c) for c in first["concept"].values if all(c in maps["concept"].values for maps in panels.values())]
    concepts = shared if concepts is None else [str(concept) for concept in concepts]
    unknown = [concept for concept in concepts if concept not in shared]
    if unknown or not concepts:
        raise ValueError(f"concepts {unknown or '(none)'} are not in every item; shared concepts: {shared}")
    video = checked_video(video if video is not None else _video_of(items))
    pixel_frames = (first["pixel_frame_last"].values if "pixel_frame_last" in first.coords else np.arange(frames))
    cols = min(len(panels), 4) if cols is None else int(cols)
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")

    # per panel: the values of its other dim ([None] without one) and the scaled [C, F, y, x] maps of each
    other_dims = {title: (maps.dims[0] if maps.ndim == 5 else None) for title, maps in panels.items()}
    values = {title: (list(maps[other_dims[title]].values) if other_dims[title] else [None])
              for title, maps in panels.items()}

    def scaled(title: str, value: Any) -> np.ndarray:
        maps = panels[title]
        maps = maps.sel({other_dims[title]: value}) if value is not None else maps
        array = maps.sel(concept=concepts).values
        return array.astype(np.float32) if scale is None else scale_maps(array, scale).astype(np.float32)

    def title_of(title: str, value: Any) -> str:
        text = title if value is None else f"{title} · {other_dims[title]}={value}"
        if ground_truth is None:
            return text
        maps = panels[title] if value is None else panels[title].sel({other_dims[title]: value})
        scores = panel_scores(maps, ground_truth, concepts)
        return "<br>".join([text, *(f"{label} {score:.3f}" for label, score in scores.items())])

    maps_scaled = {(title, value): scaled(title, value) for title in panels for value in values[title]}
    rows = -(-len(panels) // cols)
    titles = [title_of(title, values[title][0]) for title in panels]
    title_height = 18 * max(title.count("<br>") + 1 for title in titles)  # screen pixels above a panel
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.02,
                           vertical_spacing=min(0.5, (title_height + 10) / (cell_size * rows + title_height * rows)))
    if video is not None:
        video_strip = np.concatenate([video[min(int(p), len(video) - 1)] for p in pixel_frames], axis=1)
    heatmaps: list[int] = []  # figure trace index of every map strip
    strip_of: dict[int, tuple[str, Any]] = {}
    axis_names, widths = [], []
    for index, (title, maps) in enumerate(panels.items()):
        row, col = index // cols + 1, index % cols + 1
        height, width = (video.shape[1:3] if video is not None else (maps.sizes["y"], maps.sizes["x"]))
        cell_y, cell_x = height / maps.sizes["y"], width / maps.sizes["x"]
        if video is not None:
            figure.add_trace(go.Image(z=video_strip, x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip"), row=row, col=col)
        for position, value in enumerate(values[title]):
            figure.add_trace(go.Heatmap(
                z=_strip(maps_scaled[(title, value)][0]), x0=cell_x / 2, dx=cell_x, y0=cell_y / 2, dy=cell_y,
                colorscale=colorscale, opacity=opacity if video is not None else 1.0, visible=position == 0,
                zmin=0 if scale else None, zmax=1 if scale else None, showscale=index == 0 and position == 0,
                colorbar={"title": {"text": f"min-max per {scale}" if scale else "raw"}, "thickness": 12},
                hovertemplate="%{z:.3f}<extra></extra>",
            ), row=row, col=col)
            heatmaps.append(len(figure.data) - 1)
            strip_of[len(figure.data) - 1] = (title, value)
        subplot = figure.get_subplot(row, col)
        axis_names.append(subplot.xaxis.plotly_name)
        widths.append(width)
        figure.update_xaxes(range=[0, width], row=row, col=col)
        figure.update_yaxes(range=[height, 0], scaleanchor=subplot.xaxis.plotly_name.replace("axis", ""),
                            row=row, col=col)

    slider_steps = [{"method": "relayout", "label": f"latent {f} · px {int(pixel_frames[f])}",
                     "args": [{f"{axis}.range": [f * width, (f + 1) * width]
                               for axis, width in zip(axis_names, widths)}]}
                    for f in range(frames)]
    concept_menu = {"buttons": [{"method": "restyle", "label": f"concept: {concept}",
                                 "args": [{"z": [_strip(maps_scaled[strip_of[i]][c]) for i in heatmaps]}, heatmaps]}
                                for c, concept in enumerate(concepts)]}
    menus = [concept_menu]
    for dim in dict.fromkeys(dim for dim in other_dims.values() if dim):
        carrying = [title for title in panels if other_dims[title] == dim]
        traces = [i for i in heatmaps if strip_of[i][0] in carrying]
        options = list(dict.fromkeys(value for title in carrying for value in values[title]))
        menus.append({"buttons": [
            {"method": "update", "label": f"{dim}: {option}",
             "args": [{"visible": [strip_of[i][1] == option for i in traces]},
                      {f"annotations[{list(panels).index(title)}].text":
                       title_of(title, option) if option in values[title] else f"{title} ({dim}={option} absent)"
                       for title in carrying}, traces]}
            for option in options]})
    for position, menu in enumerate(menus):
        menu.update(type="dropdown", direction="down", active=0, showactive=True, x=0.34 * position, xanchor="left",
                    y=1.0, yanchor="bottom", pad={"b": title_height + 20})
    panel_width = cell_size * widths[0] / max(video.shape[1] if video is not None else first.sizes["y"], 1)
    figure.update_layout(
        sliders=[{"active": 0, "steps": slider_steps, "currentvalue": {"prefix": "frame: "}, "pad": {"t": 20}}],
        updatemenus=menus, height=(cell_size + title_height) * rows + 200,
        width=max(int(panel_width * cols) + 140, 720),
        margin={"l": 10, "r": 10, "t": 90 + title_height, "b": 10},
    )
    figure.update_annotations(font_size=12)
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, fixedrange=True)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, fixedrange=True)
    return figure
