"""Offline models and checks for testing vidinterp and anything built on it.

* :func:`tiny_pipeline`: tiny random-weight pipelines of every family (mechanics: shapes,
  bit-identical generation, restore on error), built by ``vidinterp.testing.tiny_<family>``
  and registered with their named variants by :func:`register_tiny`
  (:mod:`vidinterp.testing.tiny`).
* :func:`planted_pipeline`: tiny pipelines with weights set in code so that every map has a
  known right answer (:mod:`vidinterp.testing.planted`).
* :func:`check_adapter` / :func:`check_analysis`: the public conformance checks every adapter and
  every analysis must pass (:mod:`vidinterp.testing.checks`), also usable on classes that live
  outside vidinterp.
* :class:`VisitRecorder`: an analysis that records each visit's step, site, layout and tensors
  (:mod:`vidinterp.testing.recorder`).
"""

from vidinterp.testing.checks import (
    Check,
    CheckNotApplicable,
    adapter_checks,
    analysis_checks,
    check_adapter,
    check_analysis,
    parametrize_with_checks,
)
from vidinterp.testing.planted import (
    PlantedDesign,
    planted_clip,
    planted_families,
    planted_pipeline,
    planted_scores,
    planted_token_masks,
    planted_trace,
    register_planted,
)
from vidinterp.testing.recorder import VisitRecorder
from vidinterp.testing.tiny import (
    TINY_VOCABULARY,
    clip_word_tokenizer,
    random_visit,
    register_tiny,
    tiny_clip_encoder,
    tiny_families,
    tiny_image_vae,
    tiny_pipeline,
    tiny_t5_encoder,
    tiny_variants,
    word_tokenizer,
)

__all__ = [
    "VisitRecorder",
    "tiny_pipeline",
    "tiny_families",
    "tiny_variants",
    "register_tiny",
    "word_tokenizer",
    "tiny_t5_encoder",
    "clip_word_tokenizer",
    "tiny_clip_encoder",
    "tiny_image_vae",
    "random_visit",
    "TINY_VOCABULARY",
    "PlantedDesign",
    "planted_pipeline",
    "planted_families",
    "planted_clip",
    "planted_token_masks",
    "planted_trace",
    "planted_scores",
    "register_planted",
    "Check",
    "CheckNotApplicable",
    "adapter_checks",
    "analysis_checks",
    "check_adapter",
    "check_analysis",
    "parametrize_with_checks",
]
