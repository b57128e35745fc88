"""The run-time state of one trace, shared by its site processors and hooks.

The driver (generation through the pipeline, or the renoising loop) sets the denoising step; at
every transformer call the core announces the call's :class:`~vidinterp.layout.TokenLayout`,
picks the rows of the analysed CFG branch (:mod:`vidinterp.branches`) and restarts the concept
stream; every analysed attention call of a site arrives at :meth:`Runtime.observe_site`, which
adds the site's concept tensors and hands one :class:`~vidinterp.sites.SiteVisit` to every
analysis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from vidinterp.branches import Branch, branch_rows
from vidinterp.concept_stream import ConceptStream
from vidinterp.layout import TokenLayout
from vidinterp.prompt_words import PromptWords
from vidinterp.sites import SiteSpec, SiteVisit

if TYPE_CHECKING:
    from vidinterp.analysis import Analysis
    from vidinterp.processors import SiteProcessor

__all__ = ["Runtime", "site_parts"]


def site_parts(spec: SiteSpec, layout: TokenLayout, prompt_keys: int) -> dict[str, dict[str, slice]]:
    """Token slices of the ``"visual"`` and ``"prompt"`` parts of each site tensor: a joint site's
    q/k/v/z hold the joint sequence; a self site's only visual tokens; a cross site's q/z the
    visual queries and k/v the ``prompt_keys`` prompt tokens (each tensor indexed from 0)."""
    if spec.kind == "joint":
        return dict.fromkeys("qkvz", {"visual": layout.visual, "prompt": layout.prompt})
    visual = {"visual": slice(0, layout.visual_tokens)}
    if spec.kind == "self":
        return dict.fromkeys("qkvz", visual)
    prompt = {"prompt": slice(0, prompt_keys)}
    return {"q": visual, "z": visual, "k": prompt, "v": prompt}


class Runtime:
    """Step clock, current call and the analyses fed by the sites.

    Args:
        analyses: analyses updated at every analysed (step, site) visit.
        steps: denoising step indices to analyse; ``None`` analyses every step.
        concepts: the concept stream, the concepts located among the prompt tokens (families
            whose concepts are prompt words), or ``None`` without concepts.
        branch: the CFG branch analysed (``"conditional"`` by default).
    """

    def __init__(self, analyses: Iterable["Analysis"] = (), steps: Iterable[int] | None = None,
                 concepts: ConceptStream | PromptWords | None = None, branch: Branch = "conditional") -> None:
        self.analyses = list(analyses)
        self.steps = None if steps is None else frozenset(int(step) for step in steps)
        self.concepts = concepts
        self.branch = branch
        self.step = 0
        self.timestep = math.nan
        self.layout: TokenLayout | None = None
        self.active = False
        self.visited_steps: list[int] = []
        self._timesteps = None
        #: pixel frames of the video being generated or renoised (``None``: unknown).
        self.pixel_frames: int | None = None
        #: whether the driver stacks the CFG branches in one call (``None``: unknown; see
        #: :func:`vidinterp.branches.branch_rows`).
        self.cfg_batched: bool | None = None
        #: the branch name the pipeline announced for the current call, if any.
        self.announced: str | None = None
        #: set while an intervention runs an extra, perturbed transformer call (never analysed;
        #: :mod:`vidinterp.interventions`).
        self.perturbing = False

    def set_step(self, step: int, timestep: float | torch.Tensor = math.nan) -> None:
        """Announce the denoising step index (position in the scheduler's schedule)."""
        self.step = int(step)
        self.timestep = float(timestep)

    def set_timestep_from(self, timesteps) -> None:
        """Read the current step's timestep from ``timesteps()[step]`` when a call begins
        (pipelines set their schedule only once called)."""
        self._timesteps = timesteps

    # ---------------------------------------------------------------- calls
    def begin_call(self, layout: TokenLayout, announced: str | None, call_arguments: dict[str, Any] | None = None,
                   perturbed: bool = False) -> None:
        """Called before each transformer call with its layout (every row), the branch name the
        pipeline announced (``None``: none) and its arguments by name. A call of no analysed row
        (another branch, a perturbed branch, a step outside ``steps``) is not analysed, and the
        processors then skip all extra work."""
        self.announced = announced
        perturbed = perturbed or self.perturbing
        rows = None if perturbed else branch_rows(announced, layout.batch, self.cfg_batched, self.branch)
        self.layout = layout if rows is None else dataclasses.replace(layout, analysed_rows=rows)
        if self._timesteps is not None:
            values = self._timesteps()
            if self.step < len(values):
                self.timestep = float(values[self.step])
        self.active = rows is not None and (self.steps is None or self.step in self.steps)
        if self.active and (not self.visited_steps or self.visited_steps[-1] != self.step):
            self.visited_steps.append(self.step)
        if self.active and isinstance(self.concepts, ConceptStream):
            self.concepts.begin(call_arguments or {}, rows)

    def end_call(self) -> None:
        self.active = False

    @property
    def streaming(self) -> bool:
        """Whether the concept stream runs in the current call."""
        return self.active and isinstance(self.concepts, ConceptStream)

    # ---------------------------------------------------------------- sites
    def observe_site(self, site: "SiteProcessor", attn: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, output: torch.Tensor) -> None:
        """One analysed attention call of ``site`` (tensors ``[batch, heads, tokens, head_dim]``
        after its hook points): its concept tensors, then a visit to every analysis."""
        layout, spec = self.layout, site.spec
        parts = site_parts(spec, layout, key.shape[2])
        concept_tensors: dict[str, torch.Tensor] = {}
        rows = layout.analysed_rows
        if spec.concept_stream and self.streaming:
            visual = parts["k"]["visual"]
            concept_tensors = self.concepts.attend(site, attn, key[rows, :, visual], value[rows, :, visual])
        elif isinstance(self.concepts, PromptWords) and "prompt" in parts["k"]:
            prompt = parts["k"]["prompt"]
            concept_tensors = {"k": self.concepts.gather(key[rows, :, prompt]),
                               "v": self.concepts.gather(value[rows, :, prompt])}
        if not self.analyses:
            return
        visit = SiteVisit(site=spec, step=self.step, timestep=self.timestep, layout=layout,
                          tensors={"q": query, "k": key, "v": value, "z": output}, parts=parts,
                          concept_tensors=concept_tensors)
        with torch.no_grad():
            for analysis in self.analyses:
                analysis.observe(visit)
