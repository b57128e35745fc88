"""Offline models and checks for testing vidinterp and anything built on it.

* :func:`tiny_pipeline`: tiny random-weight pipelines of every family (mechanics: shapes,
  bit-identical generation, restore on error).
* :func:`planted_pipeline`: tiny pipelines with weights set in code so that every map has a
  known right answer (:mod:`vidinterp.testing.planted`).
* :func:`check_adapter` / :func:`check_analysis`: the public conformance checks every adapter and
  every analysis must pass (:mod:`vidinterp.testing.checks`), also usable on classes that live
  outside vidinterp.
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
from vidinterp.testing.tiny import TINY_VOCABULARY, random_visit, tiny_pipeline, tiny_t5_encoder, word_tokenizer

__all__ = [
    "tiny_pipeline",
    "word_tokenizer",
    "tiny_t5_encoder",
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
