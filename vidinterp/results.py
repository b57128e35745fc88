"""The result of a trace: labelled ``xarray.Dataset`` s, a plot, and netCDF persistence."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Trace", "GROUPS"]

GROUPS = ("maps", "heads", "layers", "diagnostics")


@dataclass
class Trace:
    """Everything one ``vidinterp.trace`` call computed.

    Attributes:
        maps: saliency maps with dims ``(concept, frame, y, x)``, one variable per method.
        heads: per-head results (separation scores, selected heads) ``(step, layer, head)``.
        layers: per-layer results (lambda2) ``(step, layer, head)`` and ``lambda2_layer`` ``(layer)``.
        diagnostics: everything else (surrogate token positions, raw QK maps).
        video: ``uint8`` ``[frames, height, width, 3]``, the (resampled) input or generated
            video, or ``None``.
        attrs: provenance (model, prompt, mode, settings).

    Figures (plotly, docs/figures.md): :meth:`plot` (maps over the video, methods side by
    side), :meth:`plot_lambda2` and :meth:`plot_lambda2_steps` (layer scores),
    :meth:`plot_separation` (head scores, selected heads), :meth:`plot_head_scatter`
    (separation vs localisation), :meth:`plot_qk_peaks` (surrogate tokens over the video).
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

    def plot(self, **kwargs: Any) -> "go.Figure":
        """The video with map overlays: one row per concept, one column per map method (every
        ``(concept, frame, y, x)`` variable of :attr:`maps`, a user analysis' too), a slider
        over pixel frames labelled with their latent frame, play button (no auto-play), colour
        bar. Keywords (``video``, default the trace's; ``methods``, ``concepts``,
        ``scale="frame" | "concept" | "global"``, ``interpolation="nearest" | "bilinear"``,
        ``colorscale``, ``opacity``): see
        :func:`vidinterp.plotting.plot_maps`."""
        from vidinterp.plotting import plot_maps

        return plot_maps(self.maps, **{"video": self.video, **kwargs})

    def plot_lambda2(self, **kwargs: Any) -> "go.Figure":
        """``|lambda2|`` per layer (box and points over heads, mean line), the selection
        threshold as a line and the selected layers marked; needs the ``Lambda2`` analysis.
        By default the threshold and layer scores are the calibration the trace ran with
        (``pipe.vidinterp_calibration``, recorded in ``lambda2_layer``'s attrs), else the family's
        published threshold; ``calibration=`` (a dict or a layer-score JSON) overrides them. See
        :func:`vidinterp.plotting.plot_lambda2`."""
        from vidinterp.plotting import plot_lambda2

        return plot_lambda2(self.layers, **kwargs)

    def plot_lambda2_steps(self, **kwargs: Any) -> "go.Figure":
        """``|lambda2|`` over the analysed denoising steps, one line per layer (mean over
        heads), with the threshold. See :func:`vidinterp.plotting.plot_lambda2_steps`."""
        from vidinterp.plotting import plot_lambda2_steps

        return plot_lambda2_steps(self.layers, **kwargs)

    def plot_separation(self, scores: Iterable[str] | None = None, **kwargs: Any) -> "go.Figure":
        """Separation scores (``Separation`` analysis) as layer x head heatmaps, one panel per
        score, with IMAP's selected heads (``imap_selected_heads``) marked. See
        :func:`vidinterp.plotting.plot_separation`."""
        from vidinterp.plotting import plot_separation

        return plot_separation(self.heads, scores, **kwargs)

    def plot_head_scatter(self, localisation: xr.DataArray | None = None, *, masks: np.ndarray | None = None,
                          score: str = "chi", step: int | None = None) -> "go.Figure":
        """Each head's separation ``score`` against its localisation, with Pearson and Spearman
        correlations (IMAP paper, Fig. 5). Either give ``localisation`` ``(layer, head)``, or
        ``masks`` ``bool [concept, pixel_frames, height, width]`` (ground truth per concept of
        :attr:`maps`) for a trace run with
        :func:`vidinterp.plotting.head_map_analyses` (one GramCol map per head): the
        localisation is then :func:`vidinterp.plotting.head_localisation`'s IoU. See
        :func:`vidinterp.plotting.plot_head_scatter`."""
        from vidinterp.plotting import head_localisation, plot_head_scatter, stack_head_maps

        if (localisation is None) == (masks is None):
            raise ValueError("plot_head_scatter needs exactly one of localisation= (a (layer, head) DataArray) "
                             "and masks= (ground truth for the per-head maps)")
        if localisation is None:
            localisation = head_localisation(stack_head_maps(self.maps), masks)
        return plot_head_scatter(self.heads, localisation, score=score, step=step)

    def plot_qk_peaks(self, **kwargs: Any) -> "go.Figure":
        """Where each concept's QK peak (surrogate token) lands per (layer, head), as markers
        at token-cell centres over the video (``QKMatching`` analysis; IMAP paper, Fig. 4). See
        :func:`vidinterp.plotting.plot_qk_peaks`."""
        from vidinterp.plotting import plot_qk_peaks

        return plot_qk_peaks(self.diagnostics, self.video, **kwargs)

    def plot_head_embeddings(self, layer: int | None = None, step: int | None = None, heads: Iterable[int] | None = None,
                             *, cols: int = 4, **pacmap_options: Any) -> "go.Figure":
        """PaCMAP embeddings of each head's visual-token outputs at one layer and step, one panel
        per head, points coloured by latent frame (IMAP paper, Fig. 17); needs the ``HeadOutputs``
        analysis (``head_outputs``). ``pacmap_options`` (``n_neighbors``, ``MN_ratio``,
        ``FP_ratio``, ``random_state``, ...) go to :func:`vidinterp.plotting.head_embeddings`. See
        :func:`vidinterp.plotting.plot_head_embeddings`."""
        from vidinterp.plotting import head_embeddings, plot_head_embeddings

        embeddings = head_embeddings(self, layer, step, None if heads is None else list(heads), **pacmap_options)
        return plot_head_embeddings(embeddings, cols=cols)

    def plot_comparison(self, methods: Iterable[str] | None = None, **kwargs: Any) -> "go.Figure":
        """This trace's maps (``methods``, default every ``(concept, frame, y, x)`` variable) side by
        side on the same frames, one panel per method, with a shared frame slider and a concept
        dropdown; ``ground_truth=`` puts each panel's scores in its title. Several traces:
        :func:`vidinterp.plotting.plot_comparison` with ``{title: trace}``."""
        from vidinterp.plotting import plot_comparison
        from vidinterp.plotting.overlays import map_variables

        names = map_variables(self.maps, methods)
        return plot_comparison({name: self.maps[name] for name in names}, **{"video": self.video, **kwargs})

    def report(self, path: str | PathLike, figures: Any = None, **options: Any) -> Path:
        """Write one self-contained HTML report (plotly.js inlined once, opens offline): the map
        overlays and every other figure this trace has data for (``figures`` to choose), with the
        settings that produced them. See :func:`vidinterp.report.report_for_trace`."""
        from vidinterp.report import report_for_trace

        return report_for_trace(self, path, figures, **options)

    def export(self, path: str | PathLike, *, method: str, concept: str, **options: Any) -> Path:
        """Write one method's map of one concept over the video as an ``.mp4`` or ``.gif``, every
        pixel frame with the map of the latent frame it belongs to. See
        :func:`vidinterp.export.export_overlay`."""
        from vidinterp.export import export_overlay

        return export_overlay(self, path, method=method, concept=concept, **options)

    def save(self, path: str | PathLike) -> Path:
        """Write the trace to one netCDF-4 file (h5netcdf) at ``path``, or to a zarr store when
        ``path`` ends in ``.zarr``, and return the path.

        The file (or store) holds one group per non-empty Dataset (``maps``, ``heads``, ``layers``,
        ``diagnostics``, each with the trace attrs), a ``video`` group when there is a video, and
        the root attributes ``vidinterp_format_version`` and ``vidinterp_version``
        (:mod:`vidinterp.trace_file`). The save is atomic: it writes a temporary file in the same
        folder and renames it over ``path``, so if it fails or is interrupted an earlier file at
        ``path`` is left byte-identical and no temporary file remains (a zarr store is written to
        a temporary folder and swapped in; see :mod:`vidinterp.trace_file`).
        """
        from vidinterp.trace_file import write_trace

        return write_trace(self, path)

    @classmethod
    def load(cls, path: str | PathLike) -> "Trace":
        """Read a netCDF file or zarr store written by :meth:`save` (any format version up to
        :data:`vidinterp.trace_file.FORMAT_VERSION`, unversioned files included).

        Raises:
            FileNotFoundError: nothing at ``path``.
            ValueError: not a netCDF file, not a vidinterp trace, or a newer format version
                (upgrade vidinterp); the message names ``path``.
        """
        from vidinterp.trace_file import read_trace

        return cls(**read_trace(path))
