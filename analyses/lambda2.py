"""DTMC lambda2 layer scoring and the layer selector built on it.

Each head's joint attention matrix ``A = softmax(q k^T / sqrt(d))`` over all tokens (visual +
prompt) is the transition matrix of a Markov chain; ``|lambda2|``, the modulus of its second
eigenvalue, scores the head, and a layer scores the mean over its heads (docs/methods.md
"Layer selection: lambda2"). ``A`` is never formed: ``A v`` is an attention call with ``v``
as values, so a Krylov method needs only attention passes (:mod:`vidinterp.kernels.spectral`).

Scores are a per-model calibration: :func:`calibrate_layers` computes them over a few prompts
and steps and stores them as JSON; :class:`Lambda2Layers` reads them (or the reference layer
lists of the published models) to select layers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal

import xarray as xr

from vidinterp.accumulators import RunningMeans, step_layer_grid
from vidinterp.analysis import Analysis
from vidinterp.context import TraceContext
from vidinterp.kernels.spectral import second_eigenvalue_magnitude
from vidinterp.kernels.tokens import key_padding_mask
from vidinterp.calibration import load_calibration
from vidinterp.model_cards import MODEL_CARDS, lambda2_threshold, model_card
from vidinterp.registry import register_analysis
from vidinterp.selectors import LayerSelector
from vidinterp.sites import SiteVisit

__all__ = [
    "Lambda2",
    "Lambda2Layers",
    "default_threshold",
    "calibrate_layers",
    "save_layer_scores",
    "load_calibration",
    "load_layer_scores",
    "calibration_path",
]

@register_analysis
class Lambda2(Analysis):
    """``lambda2`` ``(step, layer, head)`` and its layer score ``lambda2_layer`` ``(layer)`` (mean
    over heads and steps).

    Args:
        method: ``"krylov"`` (matrix-free, default) or ``"dense"`` (forms ``A``; small sizes).
        solver_options: passed to :func:`~vidinterp.kernels.spectral.second_eigenvalue_magnitude`.
            Default ``stop="ritz"`` (stop once the error left in the dominant Ritz modulus,
            extrapolated from its change over the last attention passes, is at most
            ``tol=1e-3``; heads grouped so that the solver's extra memory stays within 5% of
            one float32 ``P x P`` matrix at large ``P``); ``stop="residual"`` selects the
            exact restarted solver.

    With ``stop="ritz"`` the site's own values and attention output (``v``, ``z``, which the
    forward already computed) give the solver its first Krylov block without an attention pass;
    the solver checks ``z`` against a fresh attention on a few query rows and starts from a
    random block where they disagree. ``attention_passes`` (in :meth:`settings`) sums, over
    visits, the extra attention sweeps of the slowest head group.
    """

    name = "lambda2"
    group = "layers"
    # The chain runs over every token of the site; v and z (same tokens) seed the solver.
    requires = (("q", "all"), ("k", "all"), ("v", "all"), ("z", "all"))
    site_kinds = ("joint", "self")

    def __init__(self, *, method: Literal["krylov", "dense"] = "krylov", steps=None, layers=None, **solver_options) -> None:
        super().__init__(steps=steps, layers=layers)
        self.method, self.solver_options = method, solver_options

    def reset(self) -> None:
        self.records = RunningMeans()
        self.attention_passes = 0

    def applies_to(self, visit: SiteVisit) -> bool:
        # v and z are optional (they only seed the solver): q and k are what the chain needs.
        return visit.site.kind in self.site_kinds and visit.provides("q", "all") and visit.provides("k", "all")

    def update(self, visit: SiteVisit) -> None:
        options = {"stop": "ritz", **self.solver_options}
        if self.method == "krylov" and options["stop"] == "ritz" and "values" not in options:
            if visit.provides("v", "all") and visit.provides("z", "all"):
                options["values"], options["output"] = visit.get("v", "all"), visit.get("z", "all")
        estimate = second_eigenvalue_magnitude(
            visit.get("q", "all"), visit.get("k", "all"), key_padding_mask=key_padding_mask(visit),
            method=self.method, return_info=True, **options,
        )
        self.attention_passes += int(estimate.attention_passes)
        self.records.add((visit.step, visit.layer), estimate.modulus.float().mean(dim=0))

    def merge(self, other: "Lambda2") -> "Lambda2":
        self.records.merge(other.records)
        self.attention_passes += other.attention_passes
        self.layout = self.layout or other.layout
        return self

    def result(self) -> xr.Dataset:
        self._require_visits()
        grid, steps, layers = step_layer_grid(self.records.means(), fill=float("nan"))
        per_head = xr.DataArray(
            grid, dims=("step", "layer", "head"),
            coords={"step": steps, "layer": layers, "head": list(range(grid.shape[-1]))},
        )
        layer_scores = per_head.mean(dim=("step", "head"))
        layer_scores.attrs.update(self._calibration_attrs())
        return xr.Dataset({"lambda2": per_head, "lambda2_layer": layer_scores})

    def _calibration_attrs(self) -> dict[str, Any]:
        """What layer selection reads in this trace, kept beside the scores for figures: the
        trace calibration's ``threshold`` and layer scores when it has them (``threshold_source``
        ``"trace calibration"``), else the family's published threshold."""
        calibration = self.context.calibration
        threshold, source = default_threshold(self.context)
        attrs: dict[str, Any] = {"threshold": threshold, "threshold_source": source}
        if "lambda2" in calibration:
            scores = sorted((int(layer), float(score)) for layer, score in calibration["lambda2"].items())
            attrs["calibration_layers"] = [layer for layer, _ in scores]
            attrs["calibration_scores"] = [score for _, score in scores]
        return attrs

    def settings(self) -> dict:
        return {**super().settings(), "solver": self.method, "attention_passes": self.attention_passes}

    def layer_scores(self) -> dict[int, float]:
        """``{layer: mean |lambda2| over heads and steps}``."""
        scores = self.result()["lambda2_layer"]
        return {int(layer): float(value) for layer, value in zip(scores.layer.values, scores.values)}


def calibration_path(model: str, directory: str | os.PathLike | None = None) -> Path:
    """Where the layer scores of ``model`` are stored (``$VIDINTERP_CACHE`` or
    ``~/.cache/vidinterp``, then ``calibration/<model>.json``)."""
    root = Path(directory or os.environ.get("VIDINTERP_CACHE", Path.home() / ".cache" / "vidinterp"))
    return root / "calibration" / (re.sub(r"[^A-Za-z0-9._-]+", "--", model) + ".json")


def save_layer_scores(scores: dict[int, float], model: str, path: str | os.PathLike | None = None, **provenance: Any) -> Path:
    """Write ``{layer: score}`` for ``model`` as JSON (default: :func:`calibration_path`)."""
    target = Path(path) if path is not None else calibration_path(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "method": "lambda2", "scores": {str(k): float(v) for k, v in sorted(scores.items())}, **provenance}
    target.write_text(json.dumps(payload, indent=2))
    return target


def load_layer_scores(source: str | os.PathLike) -> dict[int, float]:
    """Read ``{layer: score}`` from a JSON file written by :func:`save_layer_scores`."""
    return load_calibration(source)["lambda2"]


def calibrate_layers(model: Any, prompts: Iterable[str], *, num_inference_steps: int = 50,
                     steps: Iterable[int] | None = None, path: str | os.PathLike | None = None,
                     **trace_options: Any) -> dict[int, float]:
    """Compute and store lambda2 layer scores of ``model`` over ``prompts`` (generation mode,
    analysed ``steps``). Returns ``{layer: score}``; the JSON goes to ``path`` or the model's
    :func:`calibration_path`, where :class:`Lambda2Layers` finds it."""
    from vidinterp.inputs import load_pipeline
    from vidinterp.trace import trace

    pipe = load_pipeline(model)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("calibrate_layers needs at least one prompt")
    runs = []
    for prompt in prompts:
        runs.append(Lambda2())
        result = trace(pipe, prompt=prompt, concepts=[prompt.split()[0]], analyses=[runs[-1]],
                       num_inference_steps=num_inference_steps, steps=steps, **trace_options)
        model_name = result.attrs["model"]
    total = runs[0]
    for run in runs[1:]:
        total.merge(run)
    scores = total.layer_scores()
    save_layer_scores(scores, model_name, path, prompts=prompts, num_inference_steps=num_inference_steps,
                      attention_passes=total.attention_passes)
    return scores


def default_threshold(context: TraceContext) -> tuple[float, str]:
    """``(threshold, source)`` of layer selection when none is given: the trace calibration's
    ``"lambda2_threshold"`` (source ``"trace calibration"``), else the family's published value
    (source ``"paper value for <model>"``; :func:`vidinterp.model_cards.lambda2_threshold`)."""
    if "lambda2_threshold" in context.calibration:
        return float(context.calibration["lambda2_threshold"]), "trace calibration"
    return float(lambda2_threshold(context.model)), f"paper value for {context.model or 'an unnamed model'}"


class Lambda2Layers(LayerSelector):
    """Layers whose lambda2 layer score exceeds ``threshold``.

    Scores come from, in order: ``scores`` (a ``{layer: score}`` dict or a JSON path), the
    trace context's calibration, the stored calibration of the model (:func:`calibration_path`).
    ``threshold`` defaults to the trace calibration's ``"lambda2_threshold"`` when it has one,
    else the family's published value (0.7 CogVideoX, 0.75 HunyuanVideo). Without scores, the
    model's reference layer list (:mod:`vidinterp.model_cards`) is used, and otherwise
    ``fallback``: ``"all"`` layers or ``"error"``.
    """

    def __init__(self, threshold: float | None = None, *, scores: dict[int, float] | str | os.PathLike | None = None,
                 fallback: Literal["all", "error"] = "error") -> None:
        if fallback not in ("all", "error"):
            raise ValueError(f"fallback must be 'all' or 'error', got {fallback!r}")
        self.threshold, self.scores, self.fallback = threshold, scores, fallback
        self.source = "unbound"
        self.layers: list[int] | None = None

    def bind(self, context: TraceContext) -> None:
        super().bind(context)
        scores, self.source = self._find_scores(context)
        threshold = self.threshold if self.threshold is not None else default_threshold(context)[0]
        if scores is not None:
            self.layers = sorted(layer for layer, score in scores.items() if score > threshold)
        elif model_card(context.model) is not None:
            self.layers, self.source = list(model_card(context.model).layers), f"reference list of {context.model}"
        elif self.fallback == "all":
            self.layers, self.source = None, "no calibration: all layers"
        else:
            raise ValueError(
                f"no lambda2 layer scores for model {context.model!r}: run "
                f"vidinterp.analyses.lambda2.calibrate_layers(pipe, prompts) or pass scores=...; "
                f"reference lists exist for {sorted(MODEL_CARDS)}"
            )

    def _find_scores(self, context: TraceContext) -> tuple[dict[int, float] | None, str]:
        if isinstance(self.scores, dict):
            return {int(k): float(v) for k, v in self.scores.items()}, "given scores"
        if self.scores is not None:
            return load_layer_scores(self.scores), str(self.scores)
        if "lambda2" in context.calibration:
            return context.calibration["lambda2"], "trace calibration"
        stored = calibration_path(context.model) if context.model else None
        if stored is not None and stored.is_file():
            return load_layer_scores(stored), str(stored)
        return None, ""

    def selects(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def __repr__(self) -> str:
        chosen = "all" if self.layers is None else self.layers
        return f"Lambda2Layers(threshold={self.threshold}, layers={chosen}, source={self.source!r})"
