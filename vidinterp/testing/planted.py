"""Planted models: tiny pipelines whose weights are set in code so that the right answer is known.

Random weights give meaningless maps, so a bug in token order, frame indexing, the analysed CFG
branch or the latent-to-pixel convention would pass any test that only checks shapes. A
*planted* pipeline is the real diffusers pipeline and transformer class of a family, tiny, with
every weight written by hand (in the spirit of Tracr and InterpBench) so that:

* the **localising head** ``design.localising = (layer, head)`` matches the key of each planted
  word (``"red"``, ``"blue"``, through the model's own text path) with the visual tokens of that
  word's colour: the true map of ``"red"`` is the token mask of the red object in every frame,
  and no other head carries any concept signal;
* the **motion head** ``design.motion`` makes every visual token attend to its own position in
  the previous latent frame and reads the latent *clock* (the frame index that
  :class:`~vidinterp.testing.latent.PlantedLatentMapping` writes into one latent channel), so its
  outputs separate frames better than any other head of its layer (video families only);
* the **uniform layer** attends uniformly (``|lambda2| = 0``) and the **identity layer** makes
  every visual token attend to itself (``|lambda2|`` close to 1), so their lambda2 order is known;
* the VAE is the parameter-free :class:`~vidinterp.testing.latent.PlantedLatentMapping`, so
  renoising :func:`planted_clip` puts a known token mask in every latent frame
  (:func:`planted_token_masks`).

Every block's residual update is gated off (adaptive-norm gates are zero), so each block reads the
same input embedding and each planted head is a small, readable weight program. Family builders
live in ``vidinterp.testing.planted_<family>`` and register themselves with
:func:`register_planted`; :func:`planted_pipeline` builds one. The pipeline carries its
:class:`PlantedDesign` as ``pipe.vidinterp_planted``.

Design recipe shared by the builders (so a new family is built the same way):

* **Ballast.** LayerNorm and RMSNorm divide by a token's spread. Every normalised vector holds
  a large constant ``+B`` (and ``-B`` for LayerNorm) in dedicated channels, so that spread is
  nearly the same for every token and the norm acts as a fixed scaling; the norm's own weight is
  zero on those channels, so they never reach attention.
* **Mirrored features.** Features are written as ``(+f, -f)`` channel pairs, so a token's mean
  over channels is exactly zero and LayerNorm's mean subtraction leaks nothing into other
  channels.
* **Rotary.** Concept signals sit in the rotary channel pairs that rotary turns the least over
  the native grid (:func:`rotary_angles`); the motion and identity heads use the pairs it turns
  the most, with the key rotated by the angle offset of the target position
  (:func:`offset_phases`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from vidinterp.datasets.shapes import ShapeObject, ShapesClip, render_clip
from vidinterp.testing.builders import import_builtin_builders
from vidinterp.testing.latent import COLOR_CHANNELS, PlantedLatentMapping

__all__ = [
    "PlantedDesign",
    "register_planted",
    "planted_families",
    "planted_pipeline",
    "planted_clip",
    "planted_token_masks",
    "rotary_angles",
    "offset_phases",
    "PLANTED_WORDS",
]

#: Planted words and the palette colour whose tokens each one localises.
PLANTED_WORDS: dict[str, str] = {"red": "red", "blue": "blue"}


@dataclass(frozen=True)
class PlantedDesign:
    """The known answers a planted pipeline was built to give.

    Attributes:
        family: adapter family.
        variant: the builder's variant name.
        words: planted word -> palette colour whose visual tokens it localises.
        localising: ``(layer, head)`` of the localising head.
        motion: ``(layer, head)`` of the motion head; ``None`` for one-frame (image) models.
        uniform_layer: layer whose attention is exactly uniform (``|lambda2| = 0``).
        identity_layer: layer whose visual tokens attend to themselves (``|lambda2|`` near 1).
        geometry: ``(frames, height, width)`` pixels the design is made for.
        token_cell: pixels per visual token side (VAE compression x patch size).
        temporal_compression: pixel frames per latent frame (1 for images).
        temporal_patch: latent frames per token frame.
        prompt: a prompt holding every planted word (cross-attention families read concepts
            from it).
        num_inference_steps, renoise_step: a schedule and the step the checks renoise at
            (late, so little noise covers the clip).
    """

    family: str
    variant: str
    words: dict[str, str]
    localising: tuple[int, int]
    motion: tuple[int, int] | None
    uniform_layer: int
    identity_layer: int
    geometry: tuple[int, int, int]
    token_cell: int
    temporal_compression: int
    temporal_patch: int = 1
    prompt: str = "a red square moving right and a blue square"
    num_inference_steps: int = 50
    renoise_step: int = 49
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def token_frames(self) -> int:
        """Token frames of the native geometry."""
        latent = (self.geometry[0] - 1) // self.temporal_compression + 1
        return latent // self.temporal_patch

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of visual tokens per frame."""
        return self.geometry[1] // self.token_cell, self.geometry[2] // self.token_cell


_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_planted(family: str) -> Callable:
    """Decorator registering ``builder(**variant) -> pipeline`` as the planted builder of
    ``family`` (a builder for a family defined outside vidinterp registers the same way)."""

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[family] = builder
        return builder

    return decorate


def _load_builtin_builders() -> None:
    import_builtin_builders("planted_")


def planted_families() -> list[str]:
    """Families with a registered planted builder."""
    _load_builtin_builders()
    return sorted(_BUILDERS)


def planted_pipeline(family: str, **variant: Any):
    """A planted pipeline of ``family`` (see the module docstring); ``variant`` goes to the
    family's builder. Its :class:`PlantedDesign` is ``pipe.vidinterp_planted``."""
    _load_builtin_builders()
    try:
        builder = _BUILDERS[family]
    except KeyError:
        raise ValueError(f"no planted pipeline for family {family!r}; planted families: {sorted(_BUILDERS)}") from None
    return builder(**variant)


# -------------------------------------------------------------------- the clip and its answers
def planted_clip(design: PlantedDesign) -> ShapesClip:
    """The clip every planted check renoises, at ``design.geometry``: a red square of 2x2 token
    cells in token rows 1-2, starting at columns 1-2 and moving right by one cell per latent
    frame (``token_cell / temporal_compression`` pixels per pixel frame), and a static blue
    square of 2x2 cells in the bottom-right corner (rows and columns ``-3, -2``). Both are aligned
    to the token grid at every pixel frame the latent mapping samples (``0, k, 2k, ...``)."""
    frames, height, width = design.geometry
    cell, k = design.token_cell, design.temporal_compression
    rows, columns = design.token_grid
    last_column = design.token_frames * design.temporal_patch + 1  # right column of the red square at the end
    if rows < 5 or columns < 5 or (rows < 6 and last_column >= columns - 3) or last_column >= columns:
        raise ValueError(
            f"the planted clip needs a token grid where a 2x2 red square can move {design.token_frames} cells "
            f"right without meeting the blue square; got {rows}x{columns} tokens"
        )

    def square(color: str, row: int, column: int, **motion: Any) -> ShapeObject:
        centre = ((column + 1) * cell - 0.5, (row + 1) * cell - 0.5)  # a 2x2-cell box, pixel centres inside
        return ShapeObject(shape="square", color=color, size=2 * cell, position=centre, **motion)

    motion = {"direction": "right", "speed": cell / k} if frames > 1 else {}
    return render_clip([square("red", 1, 1, **motion), square("blue", rows - 3, columns - 3)], frames, height, width)


def planted_token_masks(clip: ShapesClip, design: PlantedDesign) -> dict[str, np.ndarray]:
    """Token masks ``bool [token_frames, rows, columns]`` of each planted word: the token cells
    more than half covered by the word's colour in the pixel frame the latent mapping samples
    for each latent frame (the first latent frame of a token frame)."""
    mapping = PlantedLatentMapping(spatial_compression=design.token_cell, temporal_compression=design.temporal_compression)
    pixels = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
    if design.temporal_compression == 1 and clip.num_frames == 1:
        pixels = pixels[:, :, 0]
    cells = mapping.latents(pixels) / mapping.config.amplitude
    if cells.ndim == 4:
        cells = cells.unsqueeze(2)
    cells = cells[0, :, :: design.temporal_patch]  # [channels, token frames, rows, columns]
    return {word: (cells[COLOR_CHANNELS.index(colour)] > 0.5).numpy() for word, colour in design.words.items()}


# -------------------------------------------------------------------- weight-design helpers
def rotary_angles(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotation angle of every rotary channel pair at every token, ``[tokens, head_dim / 2]``
    (radians), from a rotary table ``cos``/``sin`` ``[tokens, head_dim]`` whose pairs are the
    interleaved channels ``(2m, 2m + 1)``."""
    return torch.atan2(sin[:, 0::2].double(), cos[:, 0::2].double())


def offset_phases(angles: torch.Tensor, query_token: int, key_token: int) -> torch.Tensor:
    """Per-pair phase ``delta_m`` that makes a rotary head's score peak where the key sits at
    ``key_token`` relative to a query at ``query_token``: with pre-rotary query pair ``(r, 0)``
    and key pair ``r (cos delta_m, sin delta_m)``, the score of query ``i`` and key ``j`` is
    ``sum_m r^2 cos(phi_m(i) - phi_m(j) - delta_m)``, largest when ``phi(j) = phi(i) -
    delta``. Both tokens index the rows of ``angles`` (:func:`rotary_angles`)."""
    return angles[query_token] - angles[key_token]


# -------------------------------------------------------------------- scoring the answers
def planted_trace(pipe, analyses=None, concepts=None):
    """Renoise :func:`planted_clip` through a planted ``pipe`` at the design's late step and
    return ``(trace, clip)``. ``analyses`` default to every registered analysis the family's
    sites allow, with the dense lambda2 solver (exact on tiny models)."""
    import vidinterp
    from vidinterp.registry import adapter_for, analysis_classes

    design: PlantedDesign = pipe.vidinterp_planted
    clip = planted_clip(design)
    if analyses is None:
        adapter = adapter_for(pipe)
        kinds = {spec.kind for spec in adapter.site_specs()}
        analyses = []
        for name, cls in sorted(analysis_classes().items()):
            if not kinds & set(cls.site_kinds) or cls.min_frames > design.token_frames:
                continue
            analyses.append(cls(method="dense") if name == "lambda2" else cls())
    trace = vidinterp.trace(
        pipe, video=clip.frames, prompt=design.prompt, concepts=list(concepts or design.words), analyses=analyses,
        num_inference_steps=design.num_inference_steps, renoise_step=design.renoise_step,
    )
    return trace, clip


def map_scores(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float, float]:
    """``(pointing, mean IoU, worst IoU)`` of one word's maps ``[F, h, w]`` against its token
    masks ``bool [F, h, w]``: pointing is the share of frames whose map peaks inside the mask,
    IoU compares the map thresholded at its per-frame mean (after min-max normalisation) with
    the mask."""
    from vidinterp.metrics import binarize_at_mean, iou

    pointing = float(np.mean([masks[f].flat[int(np.argmax(maps[f]))] for f in range(len(maps))]))
    ious = [iou(binarize_at_mean(maps[f]), masks[f]) for f in range(len(maps))]
    return pointing, float(np.mean(ious)), float(np.min(ious))


def planted_scores(pipe, analyses=None) -> dict[str, Any]:
    """Every known answer of a planted pipeline, measured on one traced renoise of
    :func:`planted_clip` (:func:`planted_trace`):

    * ``grids``: ``{method: (frames, rows, columns)}`` of every ``(concept, frame, y, x)`` map;
    * ``maps``: ``{(method, word): (pointing, mean IoU, worst IoU)}`` for every such map whose
      grid is the design's (see :func:`map_scores`), ``(0, 0, 0)`` for one whose grid is not;
    * ``pixel_maps``: the same at pixel resolution (:func:`vidinterp.pixels.pixel_maps`) on the
      pixel frames the latent mapping samples, against the words' pixel masks;
    * ``qk_peaks``: share of frames where the localising head's QK peak (at its layer) lies in
      each word's mask, ``{word: share}``;
    * ``motion_rank``: rank (1 = first) of the motion head among its layer's heads by the
      Calinski-Harabasz separation score (``None`` for image models);
    * ``lambda2``: ``{layer: mean |lambda2| over heads}``.
    """
    from vidinterp.pixels import pixel_maps

    design: PlantedDesign = pipe.vidinterp_planted
    trace, clip = planted_trace(pipe, analyses)
    masks = planted_token_masks(clip, design)
    scores: dict[str, Any] = {"grids": {}, "maps": {}, "pixel_maps": {}, "qk_peaks": {}, "motion_rank": None,
                              "lambda2": {}}
    grid = (design.token_frames, *design.token_grid)
    sampled = [0] + [design.temporal_compression * design.temporal_patch * f for f in range(1, design.token_frames)]
    for method, variable in trace.maps.data_vars.items():
        if variable.dims != ("concept", "frame", "y", "x"):
            continue
        scores["grids"][method] = tuple(variable.sizes[dim] for dim in ("frame", "y", "x"))
        if scores["grids"][method] != grid:
            for word in design.words:
                scores["maps"][(method, word)] = scores["pixel_maps"][(method, word)] = (0.0, 0.0, 0.0)
            continue
        pixels = pixel_maps(variable, clip.num_frames)
        for word in design.words:
            scores["maps"][(method, word)] = map_scores(variable.sel(concept=word).values, masks[word])
            index = [obj.color for obj in clip.objects].index(design.words[word])
            scores["pixel_maps"][(method, word)] = map_scores(
                pixels.sel(concept=word).values[sampled], clip.masks[index][sampled])
    diagnostics = trace.diagnostics
    if "surrogate_y" in diagnostics:
        layer, head = design.localising
        for word in design.words:
            y = diagnostics["surrogate_y"].sel(concept=word, layer=layer, head=head).values[:, -1]
            x = diagnostics["surrogate_x"].sel(concept=word, layer=layer, head=head).values[:, -1]
            mask = masks[word]
            inside = [f < len(mask) and 0 <= y[f] < mask.shape[1] and 0 <= x[f] < mask.shape[2] and mask[f, y[f], x[f]]
                      for f in range(len(y))]
            scores["qk_peaks"][word] = float(np.mean(inside)) if len(y) == len(mask) else 0.0
    if design.motion is not None and "separation_chi" in trace.heads:
        layer, head = design.motion
        chi = trace.heads["separation_chi"].sel(layer=layer).mean("step").values
        scores["motion_rank"] = int((np.delete(chi, head) >= chi[head]).sum()) + 1  # a tie is no win
    if "lambda2_layer" in trace.layers:
        values = trace.layers["lambda2_layer"]
        scores["lambda2"] = {int(layer): float(value) for layer, value in zip(values.layer.values, values.values)}
    return scores
