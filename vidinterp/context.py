"""What an analysis knows about the trace it runs in: :class:`TraceContext`, given to
:meth:`~vidinterp.analysis.Analysis.bind` (and to step, layer and surrogate selectors) before
the first visit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["TraceContext", "CALIBRATION_ATTRIBUTE"]

#: A pipeline may carry per-model calibration as ``pipe.vidinterp_calibration`` (a dict, e.g.
#: ``{"lambda2": {layer: score}}``); :func:`vidinterp.trace` hands it to every analysis as
#: :attr:`TraceContext.calibration`. Zoo models ship theirs this way.
CALIBRATION_ATTRIBUTE = "vidinterp_calibration"


@dataclass
class TraceContext:
    """What an analysis knows about the trace it runs in, before the first visit.

    Attributes:
        concepts: concept names, in order (the ``concept`` coordinate).
        num_layers: number of blocks with sites.
        num_inference_steps: length of the denoising schedule.
        timesteps: the schedule's timesteps, one per step index.
        model: model family / id, for provenance.
        calibration: per-model stored results (e.g. lambda2 layer scores) selectors may read;
            from the pipeline's :data:`CALIBRATION_ATTRIBUTE` when it has one.
        concept_slots: rows of the visits' concept tensors: the concepts, then zero-embedding
            padding slots when the trace pads the concept stream (``vidinterp.trace(...,
            concept_slots=...)``, the official IMAP code's convention); results keep the first
            ``len(concepts)`` rows. Defaults to ``len(concepts)``.
        locate_prompt_words: returns the concepts located among the prompt tokens
            (:class:`~vidinterp.prompt_words.PromptWords`), for analyses that read prompt keys;
            ``None`` when the trace has no prompt.
    """

    concepts: list[str]
    num_layers: int
    num_inference_steps: int
    timesteps: list[float] = field(default_factory=list)
    model: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    concept_slots: int | None = None
    locate_prompt_words: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if self.concept_slots is None:
            self.concept_slots = len(self.concepts)
        if self.concept_slots < len(self.concepts):
            raise ValueError(f"concept_slots={self.concept_slots} is fewer than the {len(self.concepts)} concepts")

    def prompt_words(self):
        """The concepts located among the prompt tokens (see :attr:`locate_prompt_words`)."""
        if self.locate_prompt_words is None:
            raise ValueError("reading the concepts' prompt tokens needs a prompt: pass prompt=... to the trace")
        return self.locate_prompt_words()
