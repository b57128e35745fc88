"""The result of a trace: labelled ``xarray.Dataset`` s, a plot, and netCDF persistence."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["Trace", "GROUPS"]

GROUPS = ("maps", "heads", "layers", "diagnostics")


@dataclass
class Trace:
    """Everything one ``vidinterp.trace`` call computed.

    Attributes:
        maps: saliency maps with dims ``(concept, frame, y, x)``, one variable per method.
        heads: per-head results (separation scores, selected heads) ``(step, layer, head)``.
        layers: per-layer results (lambda2) ``(layer, head)``.
        diagnostics: everything else (surrogate token positions, raw QK maps).
        video: ``uint8`` ``[frames, height, width, 3]``, the (resampled) input or generated
            video, or ``None``.
        attrs: provenance (model, prompt, mode, settings).
    """

    maps: xr.Dataset
    heads: xr.Dataset = field(default_factory=xr.Dataset)
    layers: xr.Dataset = field(default_factory=xr.Dataset)
    diagnostics: xr.Dataset = field(default_factory=xr.Dataset)
    video: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        lines = [f"Trace({self.attrs.get('model', '?')!r}, mode={self.attrs.get('mode', '?')!r})"]
        for group in GROUPS:
            dataset = getattr(self, group)
            if dataset.data_vars:
                described = ", ".join(f"{name}{tuple(var.dims)}" for name, var in dataset.data_vars.items())
                lines.append(f"  {group}: {described}")
        return "\n".join(lines)

    def plot(self, **kwargs):
        """Interactive plotly figure: the video with map overlays, one column per method and
        concept, a frame slider. See :func:`vidinterp.plotting.plot_maps`."""
        from vidinterp.plotting import plot_maps

        return plot_maps(self.maps, video=self.video, **kwargs)

    def save(self, path: str | PathLike) -> Path:
        """Write every non-empty group (and the video) to one netCDF file, one group each."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w"
        for group in GROUPS:
            dataset = getattr(self, group)
            if not dataset.data_vars:
                continue
            _netcdf_ready(dataset, self.attrs).to_netcdf(path, mode=mode, group=group, engine="h5netcdf")
            mode = "a"
        if self.video is not None:
            video = xr.Dataset({"video": (("pixel_frame", "pixel_y", "pixel_x", "rgb"), self.video)})
            video.to_netcdf(path, mode=mode, group="video", engine="h5netcdf")
        return path

    @classmethod
    def load(cls, path: str | PathLike) -> "Trace":
        """Read a file written by :meth:`save`."""
        import h5netcdf

        with h5netcdf.File(path, "r") as handle:
            present = set(handle.groups)
        groups = {
            group: xr.load_dataset(path, group=group, engine="h5netcdf") if group in present else xr.Dataset()
            for group in GROUPS
        }
        video = None
        if "video" in present:
            video = xr.load_dataset(path, group="video", engine="h5netcdf")["video"].values
        attrs = dict(next((d.attrs for d in groups.values() if d.attrs), {}))
        return cls(video=video, attrs=attrs, **groups)


def _netcdf_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    return repr(value)


def _netcdf_ready(dataset: xr.Dataset, attrs: dict[str, Any]) -> xr.Dataset:
    dataset = dataset.copy()
    dataset.attrs = {key: _netcdf_value(value) for key, value in {**attrs, **dataset.attrs}.items()}
    for variable in dataset.variables.values():
        variable.attrs = {key: _netcdf_value(value) for key, value in variable.attrs.items()}
    return dataset
