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
        """Write the trace to one netCDF-4 file (h5netcdf) at ``path`` and return the path.

        The file holds one group per non-empty Dataset (``maps``, ``heads``, ``layers``,
        ``diagnostics``, each with the trace attrs), a ``video`` group when there is a video, and
        the root attributes ``vidinterp_format_version`` and ``vidinterp_version``
        (:mod:`vidinterp.trace_file`). The save is atomic: it writes a temporary file in the same
        folder and renames it over ``path``, so if it fails or is interrupted an earlier file at
        ``path`` is left byte-identical and no temporary file remains.
        """
        from vidinterp.trace_file import write_trace

        return write_trace(self, path)

    @classmethod
    def load(cls, path: str | PathLike) -> "Trace":
        """Read a file written by :meth:`save` (any format version up to
        :data:`vidinterp.trace_file.FORMAT_VERSION`, unversioned files included).

        Raises:
            FileNotFoundError: nothing at ``path``.
            ValueError: not a netCDF file, not a vidinterp trace, or a newer format version
                (upgrade vidinterp); the message names ``path``.
        """
        from vidinterp.trace_file import read_trace

        return cls(**read_trace(path))
