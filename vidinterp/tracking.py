"""Point tracking from a video DiT's cross-frame attention: :func:`track`.

One traced pass runs the ``correspondence`` analysis (``vidinterp.analyses.correspondence``,
reached through the registry) at one layer and step, and the dense match field of each query
point's reference frame is read at the point's token cell.

**Layer and step.** Given, or the family's reference (:data:`TRACKING_REFERENCES`: CogVideoX
layer 17 at step 49 of 50, HunyuanVideo layer 16 at step 29 of 30) when the model has that
layer, else the fallback: the middle layer (``layers[len(layers) // 2]`` of the layers with
self or joint sites) at the last step of ``num_inference_steps`` (default 50).

**Pixel convention** (that of :mod:`vidinterp.pixels`). Coordinates are continuous pixels
``(x, y)``: pixel column ``c`` covers ``[c, c + 1)`` (its centre is ``c + 0.5``), so a video of
``W x H`` pixels spans ``[0, W] x [0, H]`` (as TAP-Vid's scaled coordinates; a shapes clip's
``tracks``, whose pixel centres are integers, are ``+ 0.5`` here). A point lies in token cell
``(floor(y / c_y), floor(x / c_x))``. In time, token frame ``f`` covers the pixel frames
``pixel_frame_first[f] .. pixel_frame_last[f]`` (CogVideoX: frame 0 is pixel frame 0, frame
``f >= 1`` pixel frames ``4f - 3 .. 4f``); a query at pixel frame ``t`` uses the token frame
whose span holds ``t`` as its reference.

**Tracks.** In token frame ``k`` a point is at the centre ``((x + 0.5) c_x, (y + 0.5) c_y)`` of
the cell matched to its reference cell; in its reference token frame it is the query point
itself. ``temporal="hold"`` (default) gives every pixel frame of a token frame's span that
position (as :func:`vidinterp.pixels.pixel_maps` holds maps); ``"interpolate"`` places token frame
``k`` at the middle of its span (the reference frame at the query's pixel frame) and
interpolates linearly between those anchors, holding before the first and after the last.
``confidence`` is the match's ``max_j C_k[i, j]`` of the point's token frame (1 in its reference
frame); with ``occlusion_threshold`` a point is predicted occluded where its confidence is below
it (never in its reference frame).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import xarray as xr

__all__ = ["TrackingReference", "TRACKING_REFERENCES", "tracking_layer_step", "track", "grid_points", "CONVENTION"]

#: The concept (and, for prompt-word families without a prompt, the prompt) of the trace under a
#: track: vidinterp.trace needs one concept; tracking reads none.
FILLER_WORD = "video"

CONVENTION = ("pixels: continuous (x, y), pixel column c covers [c, c+1); a track in token frame k is the centre of "
              "the matched token cell, the query point in its reference frame; time: token frame f covers pixel "
              "frames pixel_frame_first[f]..pixel_frame_last[f]")


@dataclass(frozen=True)
class TrackingReference:
    """The layer and step a published tracking setup reads: ``step`` of ``num_inference_steps``."""

    layer: int
    step: int
    num_inference_steps: int
    source: str


#: References by adapter family (the DiffTrack paper's settings).
TRACKING_REFERENCES: dict[str, TrackingReference] = {
    "cogvideox": TrackingReference(17, 49, 50, "DiffTrack: CogVideoX layer 17 at step 49 of 50"),
    "hunyuan_video": TrackingReference(16, 29, 30, "DiffTrack: HunyuanVideo layer 16 at step 29 of 30"),
}


def _tracking_layers(adapter) -> list[int]:
    return sorted({spec.layer for spec in adapter.site_specs() if spec.kind in ("joint", "self")})


def tracking_layer_step(adapter, layer: int | None = None, step: int | None = None,
                        num_inference_steps: int | None = None) -> tuple[int, int, int, str]:
    """``(layer, step, num_inference_steps, source)`` for tracking with ``adapter``'s model: the
    given values, else the family's reference when its layer exists, else the middle layer at
    the last step (see the module docstring). ``source`` says which."""
    layers = _tracking_layers(adapter)
    if not layers:
        raise ValueError(f"{adapter.family} has no self- or joint-attention site to track with")
    reference = TRACKING_REFERENCES.get(adapter.family)
    if reference is not None and reference.layer not in layers:
        reference = None
    steps = int(num_inference_steps) if num_inference_steps is not None else (
        reference.num_inference_steps if reference is not None else 50)
    if steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
    sources = []
    if layer is None:
        layer = reference.layer if reference is not None else layers[len(layers) // 2]
        sources.append(reference.source if reference is not None else "fallback: the middle layer")
    elif int(layer) not in layers:
        raise ValueError(f"layer {layer} has no self- or joint-attention site; layers are {layers}")
    if step is None:
        if reference is not None:
            step = min(steps - 1, round(reference.step * steps / reference.num_inference_steps))
        else:
            step = steps - 1
            sources.append("fallback: the last step")
    elif not 0 <= int(step) < steps:
        raise ValueError(f"step {step} is outside the schedule of {steps} steps (0..{steps - 1})")
    return int(layer), int(step), steps, "; ".join(sources) or "given"


def grid_points(layout) -> np.ndarray:
    """``float [h*w, 2]`` ``(x, y)``: the centre of every token cell (row-major)."""
    cell_y, cell_x = layout.pixels_per_token
    y, x = np.meshgrid((np.arange(layout.height) + 0.5) * cell_y, (np.arange(layout.width) + 0.5) * cell_x,
                       indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=-1)


def _token_frame_of(spans: np.ndarray, frames: int) -> np.ndarray:
    """``int [frames]``: the token frame whose span holds each pixel frame."""
    index = np.full(frames, -1)
    for f, (first, last) in enumerate(spans):
        index[first:min(last, frames - 1) + 1] = f
    if (index < 0).any():
        raise ValueError(f"pixel frames {np.flatnonzero(index < 0).tolist()} lie in no token frame's span {spans.tolist()}")
    return index


def _prompt_and_concept(adapter, prompt: str) -> tuple[str, str]:
    """A trace needs one concept, which tracking does not read: the prompt's first word, else
    ``"video"``; a family whose concepts are prompt words (no concept stream) and an empty
    prompt is prompted with ``"video"``."""
    from vidinterp.prompt_words import prompt_word_list

    words = prompt_word_list(prompt)
    if words:
        return prompt, words[0]
    return (prompt if adapter.has_concept_stream else FILLER_WORD), FILLER_WORD


def track(
    model: Any,
    video=None,
    points=None,
    *,
    prompt: str | None = None,
    query_frames: int | Sequence[int] = 0,
    layer: int | None = None,
    step: int | None = None,
    num_inference_steps: int | None = None,
    temperature="sqrt_head_dim",
    temporal: Literal["hold", "interpolate"] = "hold",
    occlusion_threshold: float | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    return_trace: bool = False,
    **trace_options: Any,
):
    """Track points through a video with a video DiT's cross-frame attention.

    Two modes, as :func:`vidinterp.trace`:

    * **real video** (``video`` given: a file, a folder of images or ``[F, H, W, 3]`` frames):
      the clip is renoised to ``step`` and denoised once (one forward); it runs at its own
      geometry, which the model must take (fit it first with
      :func:`vidinterp.video.fit_video`; points are in the pixels of the clip given);
    * **generated video** (``video=None``, ``prompt`` given): the pipeline samples the video and
      the matches are read while sampling, at ``step``; points are in the pixels of the generated
      video (``num_frames``/``height``/``width``, default the model's native geometry).

    Args:
        model: a diffusers pipeline (or a local path / cached model id).
        points: ``float [N, 2]`` ``(x, y)`` pixels (module docstring's convention); default: the
            centre of every token cell of the query frame.
        query_frames: the pixel frame of every point (one int for all, or ``[N]``).
        layer, step, num_inference_steps: where to read the matches (default:
            :func:`tracking_layer_step`).
        temperature: ``tau`` of the correspondence (``"sqrt_head_dim"``, default;
            ``"sqrt_heads"``, the reference script's, for parity only; or a float).
        temporal: ``"hold"`` or ``"interpolate"`` across the pixel frames of a token frame.
        occlusion_threshold: predict a point occluded where its confidence is below this.
        return_trace: also return the :class:`~vidinterp.results.Trace` (with the dense match
            fields in ``trace.diagnostics``).
        trace_options: more :func:`vidinterp.trace` arguments (``guidance_scale``,
            ``pipeline_kwargs``, ...).

    Returns:
        An ``xarray.Dataset``: ``tracks`` ``(point, frame, xy)`` float32 pixels, ``confidence``
        ``(point, frame)``, ``occluded`` ``(point, frame)`` (with ``occlusion_threshold``),
        ``query_frame`` ``(point)``, ``query_point`` ``(point, xy)`` and ``video`` ``(frame,
        pixel_y, pixel_x, rgb)`` uint8; coordinates ``frame`` (pixel frames) with
        ``token_frame``; attrs say the layer, step, source and convention. With
        ``return_trace``, ``(dataset, trace)``.
    """
    import vidinterp
    from vidinterp.inputs import load_pipeline
    from vidinterp.registry import adapter_for, analysis_classes
    from vidinterp.selectors import LayerIndices, StepIndices
    from vidinterp.video import as_frames

    if temporal not in ("hold", "interpolate"):
        raise ValueError(f"temporal must be 'hold' or 'interpolate', got {temporal!r}")
    if occlusion_threshold is not None and not np.isfinite(float(occlusion_threshold)):
        raise ValueError(f"occlusion_threshold must be a finite number, got {occlusion_threshold!r}")
    pipe = load_pipeline(model)
    adapter = adapter_for(pipe)
    layer, step, steps, source = tracking_layer_step(adapter, layer, step, num_inference_steps)
    if video is not None:
        frames = as_frames(video)
        geometry = tuple(int(size) for size in frames.shape[:3])
        given = (num_frames, height, width)
        if any(size is not None and size != actual for size, actual in zip(given, geometry)):
            raise ValueError(f"the clip is {geometry} (frames, height, width) but num_frames/height/width ask for "
                             f"{given}: fit the clip first (vidinterp.video.fit_video) and give points in its pixels")
    else:
        if not prompt:
            raise ValueError("track needs a video to renoise or a prompt to generate from")
        frames = None
        geometry = tuple(given or native for given, native in zip((num_frames, height, width), adapter.default_geometry()))
    layout = adapter.layout_for(*geometry)
    spans = np.array(layout.frame_spans, dtype=int).reshape(-1, 2)
    token_frame = _token_frame_of(spans, geometry[0])
    cell_y, cell_x = layout.pixels_per_token

    points = grid_points(layout) if points is None else np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"points must be finite [N, 2] (x, y) pixels, got shape {points.shape}")
    count = len(points)
    queries = np.broadcast_to(np.asarray(query_frames), (count,)).astype(np.int64)
    if not np.all((queries >= 0) & (queries < geometry[0])):
        raise ValueError(f"query frames must be pixel frames in 0..{geometry[0] - 1}, got {sorted(set(queries.tolist()))}")
    _, pixel_height, pixel_width = geometry
    outside = ~((points[:, 0] >= 0) & (points[:, 0] < pixel_width) & (points[:, 1] >= 0) & (points[:, 1] < pixel_height))
    if outside.any():
        raise ValueError(f"points {np.flatnonzero(outside).tolist()} lie outside the {pixel_width}x{pixel_height} "
                         f"video ([0, {pixel_width}) x [0, {pixel_height}))")

    references = sorted(set(token_frame[queries].tolist()))
    correspondence = analysis_classes()["correspondence"]
    analyses = {}
    for reference in references:
        analysis = correspondence(reference=reference, temperature=temperature, mass=False,
                                  layers=LayerIndices([layer]), steps=StepIndices([step]))
        analysis.name = "correspondence" if len(references) == 1 else f"correspondence_{reference}"
        analyses[reference] = analysis
    prompt, concept = _prompt_and_concept(adapter, prompt or "")
    options = dict(prompt=prompt, concepts=trace_options.pop("concepts", [concept]), analyses=list(analyses.values()),
                   num_inference_steps=steps, seed=seed, **trace_options)
    with warnings.catch_warnings():
        # the filler concept may split into sub-tokens; tracking never reads it
        warnings.filterwarnings("ignore", message=f"concept '{FILLER_WORD}' splits", category=UserWarning)
        if frames is not None:
            trace = vidinterp.trace(pipe, video=frames, renoise_step=step, num_renoise_steps=1, resample=False,
                                    **options)
        else:
            trace = vidinterp.trace(pipe, steps=[step], num_frames=geometry[0], height=geometry[1], width=geometry[2],
                                    **options)

    total_frames = geometry[0]
    tracks = np.zeros((count, total_frames, 2), dtype=np.float64)
    confidence = np.ones((count, total_frames), dtype=np.float64)
    cells = np.stack([np.clip(points[:, 1] // cell_y, 0, layout.height - 1),
                      np.clip(points[:, 0] // cell_x, 0, layout.width - 1)], axis=-1).astype(int)
    middles = spans.mean(axis=1)
    for reference, analysis in analyses.items():
        name = analysis.name
        at = {"layer": layer, "step": step}
        match_y = trace.diagnostics[f"{name}_match_y"].sel(at).values  # [F, h, w]
        match_x = trace.diagnostics[f"{name}_match_x"].sel(at).values
        peak = trace.diagnostics[f"{name}_confidence"].sel(at).values
        for p in np.flatnonzero(token_frame[queries] == reference):
            y, x = cells[p]
            per_frame = np.stack([(match_x[:, y, x] + 0.5) * cell_x, (match_y[:, y, x] + 0.5) * cell_y], axis=-1)
            per_frame[reference] = points[p]
            scores = peak[:, y, x].astype(np.float64)
            scores[reference] = 1.0
            if temporal == "hold":
                tracks[p] = per_frame[token_frame]
            else:
                anchors = middles.copy()
                anchors[reference] = queries[p]
                order = np.argsort(anchors, kind="stable")
                time = np.arange(total_frames)
                tracks[p] = np.stack([np.interp(time, anchors[order], per_frame[order, axis]) for axis in (0, 1)], -1)
                tracks[p, queries[p]] = points[p]
            confidence[p] = scores[token_frame]
    data = {
        "tracks": (("point", "frame", "xy"), tracks.astype(np.float32)),
        "confidence": (("point", "frame"), confidence.astype(np.float32)),
        "query_frame": (("point",), queries),
        "query_point": (("point", "xy"), points.astype(np.float32)),
    }
    if occlusion_threshold is not None:
        occluded = (confidence < float(occlusion_threshold)) & (token_frame[None, :] != token_frame[queries][:, None])
        data["occluded"] = (("point", "frame"), occluded)
    if trace.video is not None:
        data["video"] = (("frame", "pixel_y", "pixel_x", "rgb"), np.asarray(trace.video, dtype=np.uint8))
    attrs = {
        "model": adapter.model_name, "family": adapter.family, "mode": trace.attrs.get("mode", ""),
        "prompt": prompt, "layer": layer, "step": step, "num_inference_steps": steps,
        "layer_step_source": source, "temperature": str(temperature), "temporal": temporal,
        "occlusion_threshold": float("nan") if occlusion_threshold is None else float(occlusion_threshold),
        "pixels_per_token": [cell_y, cell_x], "convention": CONVENTION, "seed": seed,
    }
    dataset = xr.Dataset(data, coords={
        "point": np.arange(count), "frame": np.arange(total_frames), "xy": ["x", "y"],
        "token_frame": ("frame", token_frame), "token": np.arange(len(spans)),
        "pixel_frame_first": ("token", spans[:, 0]), "pixel_frame_last": ("token", spans[:, 1]),
    }, attrs=attrs)
    return (dataset, trace) if return_trace else dataset
