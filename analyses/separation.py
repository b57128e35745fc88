"""Separation scores of every head: how well a head's visual outputs separate latent frames.

Each latent frame is a cluster of its ``h*w`` visual output vectors ``o_x`` (per head, layer,
step). Scores (docs/methods.md, "Separation scores"): Calinski-Harabasz (``chi``),
Davies-Bouldin (lower is better), Silhouette (euclidean, on a seeded subsample) and the Fisher
ratio. All heads of a visit are scored at once on the model's device; results are
``(step, layer, head)``.
"""

from __future__ import annotations

from typing import Iterable

import xarray as xr

from vidinterp.accumulators import RunningMeans, step_layer_grid
from vidinterp.analysis import Analysis
from vidinterp.kernels.cluster_scores import HIGHER_IS_BETTER, SEPARATION_SCORES
from vidinterp.kernels.heads import frame_separation
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["Separation"]


@register_analysis
class Separation(Analysis):
    """Per-head separation scores ``separation_<score>`` with dims ``(step, layer, head)``.

    Args:
        scores: any of ``"chi"``, ``"davies_bouldin"``, ``"silhouette"``, ``"fisher"``.
        silhouette_sample_size: points subsampled (uniformly, seeded) for the silhouette.
        seed: silhouette subsample seed (the same subsample for every head of a visit).
    """

    name = "separation"
    group = "heads"
    requires = (("z", "visual"),)
    default = True
    min_frames = 2

    def __init__(self, scores: Iterable[str] = ("chi", "davies_bouldin", "silhouette", "fisher"), *,
                 silhouette_sample_size: int = 512, seed: int = 0, steps=None, layers=None) -> None:
        super().__init__(steps=steps, layers=layers)
        self.scores = tuple(scores)
        unknown = [score for score in self.scores if score not in SEPARATION_SCORES]
        if unknown or not self.scores:
            raise ValueError(f"unknown separation scores {unknown or '(none given)'}; expected some of {sorted(SEPARATION_SCORES)}")
        self.silhouette_sample_size, self.seed = int(silhouette_sample_size), int(seed)

    def reset(self) -> None:
        self.records = {score: RunningMeans() for score in self.scores}

    def update(self, visit: SiteVisit) -> None:
        for score in self.scores:
            options = {"sample_size": self.silhouette_sample_size, "generator_or_seed": self.seed} if score == "silhouette" else {}
            self.records[score].add((visit.step, visit.layer), frame_separation(visit, score, **options))

    def merge(self, other: "Separation") -> "Separation":
        for score in self.scores:
            self.records[score].merge(other.records[score])
        self.layout = self.layout or other.layout
        return self

    def result(self) -> xr.Dataset:
        self._require_visits()
        variables = {}
        for score in self.scores:
            if not self.records[score]:
                continue
            grid, steps, layers = step_layer_grid(self.records[score].means(), fill=float("nan"))
            variables[f"separation_{score}"] = xr.DataArray(
                grid, dims=("step", "layer", "head"),
                coords={"step": steps, "layer": layers, "head": list(range(grid.shape[-1]))},
                attrs={"higher_is_better": int(HIGHER_IS_BETTER[score])},
            )
        dataset = xr.Dataset(variables)
        if "step" in dataset.coords and self.context.timesteps:
            dataset = dataset.assign_coords(timestep=("step", [self.context.timesteps[s] for s in dataset.step.values]))
        return dataset

    def settings(self) -> dict:
        return {**super().settings(), "scores": list(self.scores), "silhouette_sample_size": self.silhouette_sample_size,
                "seed": self.seed}
