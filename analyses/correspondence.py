"""Temporal correspondence (DiffTrack): dense matches between a reference frame and every other
frame, from the cross-frame attention of the visual queries and keys.

At each visited (layer, step), for every token frame ``k`` other than the reference ``r``
(docs/methods.md, "Temporal correspondence and tracking")::

    A_fwd = mean_{b,h} softmax_j(q_r k_k^T / tau),   A_bwd = mean_{b,h} softmax_i(q_k k_r^T / tau)
    C_k = (A_fwd + A_bwd^T) / 2,   match(i) = argmax_j C_k[i, j],   confidence(i) = max_j C_k[i, j]

computed frame pair by frame pair in row blocks (:mod:`vidinterp.correspondence`), never a
``P x P`` matrix. The reference frame matches itself (identity, confidence 1). Per (layer,
step) it also scores the matching: the mean confidence, the cross-frame attention mass (the share
of the reference queries' attention, under the model's own softmax over the whole site, that
lands on the other frames) and, with ``truth``, the matching accuracy; their harmonic mean ranks
layers and steps. Not a default analysis.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from vidinterp.analysis import Analysis, map_coords
from vidinterp.correspondence import (
    Temperature,
    attention_mass,
    block_budget,
    frame_pair_correspondence,
    harmonic_mean,
    matching_accuracy,
    temperature_scale,
)
from vidinterp.kernels.tokens import frames_view, key_padding_mask
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["Correspondence"]


@register_analysis
class Correspondence(Analysis):
    """Dense cross-frame matches and their layer/step scores.

    Args:
        reference: the reference token frame (negative counts from the end).
        temperature: ``"sqrt_head_dim"`` (default, ``tau = sqrt(d)``), ``"sqrt_heads"`` (parity
            with the reference tracking script, which divides by ``sqrt(H)``) or a float ``tau``.
        truth: ``float [F, h, w, 2]`` true ``(y, x)`` cell in frame ``k`` of each reference cell,
            NaN where unknown (:func:`vidinterp.correspondence.truth_from_flow`); enables the
            matching accuracy.
        radius: a match within this many token cells (Euclidean) of the true cell counts as right.
        mass: also compute the cross-frame attention mass (one more pass over the whole key
            sequence for the reference queries; reads ``("k", "all")``).
        max_block: most elements of one score block (default ``min(2**26, P*P // 8)``).
        steps, layers: selectors (default: all).

    Result (``name`` = ``"correspondence"``), group ``diagnostics``: ``<name>_match_y``,
    ``<name>_match_x`` (int) and ``<name>_confidence``, dims ``(layer, step, frame, y, x)``;
    group ``layers``: ``<name>_frame_mass`` and (with ``truth``) ``<name>_frame_accuracy``
    ``(layer, step, frame)``, and ``<name>_mean_confidence``, ``<name>_cross_frame_mass``,
    ``<name>_accuracy``, ``<name>_score`` ``(layer, step)``.
    """

    name = "correspondence"
    group = "layers"
    requires = (("q", "visual"), ("k", "visual"), ("k", "all"))
    site_kinds = ("joint", "self")
    default = False
    min_frames = 2

    def __init__(self, *, reference: int = 0, temperature: Temperature = "sqrt_head_dim",
                 truth: np.ndarray | None = None, radius: float = 1.0, mass: bool = True,
                 max_block: int | None = None, steps=None, layers=None) -> None:
        super().__init__(steps=steps, layers=layers)
        temperature_scale(temperature, 1, 1)  # validates
        if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)):
            raise TypeError(f"reference must be an int token frame, got {reference!r}")
        if truth is not None:
            truth = np.asarray(truth, dtype=np.float64)
            if truth.ndim != 4 or truth.shape[-1] != 2:
                raise ValueError(f"truth must be [frames, rows, columns, 2] (y, x) cells, got shape {truth.shape}")
        if not radius >= 0:
            raise ValueError(f"radius must be >= 0 token cells, got {radius!r}")
        block_budget(1, max_block)  # validates
        self.reference, self.temperature, self.truth = int(reference), temperature, truth
        self.radius, self.mass, self.max_block = float(radius), bool(mass), max_block
        self.requires = (("q", "visual"), ("k", "visual")) + ((("k", "all"),) if self.mass else ())

    def reset(self) -> None:
        #: (step, layer) -> {"match": int64 [F, n], "confidence": float32 [F, n], "mass": float32 [F]}
        self.records: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def _reference_frame(self, frames: int) -> int:
        if not -frames <= self.reference < frames:
            raise ValueError(f"reference frame {self.reference} is outside the {frames} token frames")
        return self.reference % frames

    def update(self, visit: SiteVisit) -> None:
        layout = visit.layout
        frames, n = layout.frames, layout.tokens_per_frame
        reference = self._reference_frame(frames)
        queries = frames_view(visit.get("q", "visual"), frames)  # [B, H, F, n, d]
        keys = frames_view(visit.get("k", "visual"), frames)
        batch, heads = queries.shape[:2]
        scale = temperature_scale(self.temperature, queries.shape[-1], heads)
        budget = block_budget(layout.visual_tokens, self.max_block)
        device = queries.device
        matches, confidences = [], []
        for frame in range(frames):
            if frame == reference:
                matches.append(torch.arange(n, device=device))
                confidences.append(torch.ones(n, dtype=torch.float32, device=device))
                continue
            match, confidence = frame_pair_correspondence(
                queries[:, :, reference], keys[:, :, reference], queries[:, :, frame], keys[:, :, frame],
                scale=scale, max_block=budget)
            matches.append(match)
            confidences.append(confidence)
        record = {"match": torch.stack(matches), "confidence": torch.stack(confidences)}
        if self.mass:
            visual = visit.parts["k"]["visual"]
            start = range(visit.tensors["k"].shape[2])[visual].start
            groups = [slice(start + f * n, start + (f + 1) * n) for f in range(frames)]
            record["mass"] = attention_mass(queries[:, :, reference], visit.get("k", "all"), groups,
                                            scale=queries.shape[-1] ** -0.5, key_mask=key_padding_mask(visit),
                                            max_block=budget)
        self.records[(visit.step, visit.layer)] = record  # a repeated (step, layer) keeps its last visit

    def merge(self, other: "Correspondence") -> "Correspondence":
        overlap = sorted(set(self.records) & set(other.records))
        if overlap:
            raise ValueError(f"both runs visited (step, layer) {overlap}: dense matches of one (step, layer) cannot be "
                             "merged; merge runs over different steps or layers")
        self.records.update(other.records)
        self.layout = self.layout or other.layout
        return self

    def result(self) -> xr.Dataset:
        layout = self._require_visits()
        frames, rows, columns = layout.frames, layout.height, layout.width
        reference = self._reference_frame(frames)
        steps = sorted({step for step, _ in self.records})
        layers = sorted({layer for _, layer in self.records})
        shape = (len(layers), len(steps), frames, rows, columns)
        match = np.full(shape, -1, dtype=np.int64)
        confidence = np.full(shape, np.nan, dtype=np.float32)
        mass = np.full(shape[:3], np.nan, dtype=np.float32)
        for (step, layer), record in self.records.items():
            at = (layers.index(layer), steps.index(step))
            match[at] = record["match"].cpu().numpy().reshape(frames, rows, columns)
            confidence[at] = record["confidence"].float().cpu().numpy().reshape(frames, rows, columns)
            if "mass" in record:
                mass[at] = record["mass"].cpu().numpy()
        match_y, match_x = np.where(match >= 0, match // columns, -1), np.where(match >= 0, match % columns, -1)
        coords = {key: value for key, value in map_coords(layout, []).items() if key != "concept"}
        coords.update(layer=layers, step=steps)
        if self.context is not None and self.context.timesteps:
            coords["timestep"] = ("step", [self.context.timesteps[s] for s in steps])
        dense = ("layer", "step", "frame", "y", "x")
        others = [f for f in range(frames) if f != reference]
        diagnostics = {"group": "diagnostics"}
        variables = {
            f"{self.name}_match_y": xr.DataArray(match_y, dims=dense, attrs={**diagnostics, "description":
                                                 "token row in `frame` matched to reference cell (y, x)"}),
            f"{self.name}_match_x": xr.DataArray(match_x, dims=dense, attrs={**diagnostics, "description":
                                                 "token column in `frame` matched to reference cell (y, x)"}),
            f"{self.name}_confidence": xr.DataArray(confidence, dims=dense, attrs={**diagnostics, "description":
                                                    "max_j C_k[i, j] (1 at the reference frame)"}),
        }
        mean_confidence = confidence[:, :, others].mean(axis=(2, 3, 4))
        variables[f"{self.name}_mean_confidence"] = xr.DataArray(mean_confidence, dims=("layer", "step"))
        scored = [mean_confidence]
        if self.mass:
            variables[f"{self.name}_frame_mass"] = xr.DataArray(mass, dims=("layer", "step", "frame"), attrs={
                "description": "mean over reference queries of their attention mass on each frame's visual tokens"})
            cross = mass[:, :, others].sum(axis=2)
            variables[f"{self.name}_cross_frame_mass"] = xr.DataArray(cross, dims=("layer", "step"))
            scored.append(cross)
        if self.truth is not None:
            if self.truth.shape[:3] != (frames, rows, columns):
                raise ValueError(f"truth has cells {self.truth.shape[:3]} but the visual tokens are "
                                 f"(frames, rows, columns) = {(frames, rows, columns)}")
            matched = np.stack([match_y, match_x], axis=-1)
            variables[f"{self.name}_frame_accuracy"] = xr.DataArray(
                matching_accuracy(matched, self.truth, self.radius), dims=("layer", "step", "frame"))
            pooled = matching_accuracy(matched[:, :, others].reshape(len(layers), len(steps), 1, -1, columns, 2),
                                       self.truth[others].reshape(1, -1, columns, 2), self.radius)[..., 0]
            variables[f"{self.name}_accuracy"] = xr.DataArray(pooled, dims=("layer", "step"))
            scored.insert(0, pooled)
        variables[f"{self.name}_score"] = xr.DataArray(
            harmonic_mean(*scored).astype(np.float32), dims=("layer", "step"),
            attrs={"description": "harmonic mean of " + ", ".join(
                (["accuracy"] if self.truth is not None else []) + ["mean confidence"]
                + (["cross-frame mass"] if self.mass else []))})
        return xr.Dataset(variables, coords=coords)

    def settings(self) -> dict:
        return {**super().settings(), "reference": self.reference, "temperature": str(self.temperature),
                "radius": self.radius, "mass": int(self.mass), "truth": int(self.truth is not None)}
