"""QK matching diagnostics: where each concept's surrogate token lands, per head.

Records the surrogate token positions ``(concept, frame, layer, head, step) -> (y, x)`` chosen
by a surrogate selector (default: the QK peak per frame; docs/methods.md, "QK-peak
surrogates"), for the first analysed row, and optionally the raw per-head QK maps
``<q_x[p], k_c> / sqrt(d)`` averaged over steps (``keep_maps=True``; ``concept x layer x head x
P`` floats).
"""

from __future__ import annotations

import torch
import xarray as xr

from vidinterp.accumulators import step_layer_grid
from vidinterp.analysis import Analysis, map_coords
from vidinterp.kernels.surrogate import QKPeak, SurrogateSelector
from vidinterp.registry import register_analysis
from vidinterp.sites import SiteVisit

__all__ = ["QKMatching"]


@register_analysis
class QKMatching(Analysis):
    """Surrogate positions ``surrogate_y`` / ``surrogate_x`` (-1 where not visited) and, with
    ``keep_maps``, ``qk_map`` ``(concept, layer, head, frame, y, x)``."""

    name = "qk_matching"
    group = "diagnostics"
    default = True

    def __init__(self, surrogate: SurrogateSelector | None = None, *, keep_maps: bool = False, steps=None, layers=None) -> None:
        super().__init__(steps=steps, layers=layers)
        self.surrogate = surrogate or QKPeak()
        self.keep_maps = keep_maps
        self.requires = tuple(dict.fromkeys(self.surrogate.requires + (("q", "visual"),)))

    def bind(self, context) -> None:
        super().bind(context)
        self.surrogate.bind(context)

    def reset(self) -> None:
        self.positions: dict[tuple[int, int], torch.Tensor] = {}
        self.map_sums: dict[int, torch.Tensor] = {}
        self.map_counts: dict[int, int] = {}

    def update(self, visit: SiteVisit) -> None:
        # [C, F, H] on the device: moved to the host in result(), not at every visit
        self.positions[(visit.step, visit.layer)] = self.surrogate.positions(visit)[0].permute(1, 2, 0)
        if self.keep_maps:
            scores = self.surrogate.scores(visit).mean(dim=0)  # [H, slots, P]
            self.map_sums[visit.layer] = self.map_sums.get(visit.layer, 0) + scores
            self.map_counts[visit.layer] = self.map_counts.get(visit.layer, 0) + 1

    def merge(self, other: "QKMatching") -> "QKMatching":
        self.positions.update(other.positions)
        for layer, total in other.map_sums.items():
            self.map_sums[layer] = self.map_sums.get(layer, 0) + total
            self.map_counts[layer] = self.map_counts.get(layer, 0) + other.map_counts[layer]
        self.layout = self.layout or other.layout
        return self

    def result(self) -> xr.Dataset:
        layout = self._require_visits()
        named = len(self.context.concepts)  # padding slots (concept_slots) are not returned
        grid, steps, layers = step_layer_grid(self.positions, fill=-1)  # [S, L, slots, F, H]
        grid = grid.transpose(2, 3, 1, 4, 0)[:named]  # [C, F, L, H, S]
        frame_offset = (layout.tokens_per_frame * torch.arange(layout.frames)).numpy()[None, :, None, None, None]
        local = grid - frame_offset
        missing = grid < 0
        dims = ("concept", "frame", "layer", "head", "step")
        coords = {**map_coords(layout, self.context.concepts), "layer": layers, "head": list(range(grid.shape[3])), "step": steps}
        # the token grid's pixel geometry: the positions' own dims carry no y/x coordinate
        grid_attrs = {"grid_height": layout.height, "grid_width": layout.width,
                      "pixels_per_token_y": layout.pixels_per_token[0], "pixels_per_token_x": layout.pixels_per_token[1]}
        y = xr.DataArray((local // layout.width).clip(min=-1), dims=dims, attrs=grid_attrs)
        x = xr.DataArray(local % layout.width, dims=dims, attrs=grid_attrs)
        dataset = xr.Dataset({"surrogate_y": y.where(~missing, -1), "surrogate_x": x.where(~missing, -1)}, coords=coords)
        if self.keep_maps:
            stacked = torch.stack([self.map_sums[layer] / self.map_counts[layer] for layer in sorted(self.map_sums)])
            stacked = stacked[:, :, :named]  # [L, H, C, P]
            heads, concepts = stacked.shape[1], stacked.shape[2]
            maps = stacked.permute(2, 0, 1, 3).reshape(concepts, len(self.map_sums), heads, layout.frames, layout.height, layout.width)
            dataset["qk_map"] = xr.DataArray(
                maps.cpu().numpy(), dims=("concept", "layer", "head", "frame", "y", "x"),
                coords={"layer": sorted(self.map_sums)},
            )
        return dataset

    def settings(self) -> dict:
        return {**super().settings(), "surrogate": repr(self.surrogate), "keep_maps": int(self.keep_maps)}
