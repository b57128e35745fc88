"""Conformance checks that every adapter and every analysis must pass, as scikit-learn's
``check_estimator`` does for estimators.

Each check is a named function; :func:`adapter_checks` / :func:`analysis_checks` list the checks
of a class (one per tiny variant or planted family where that applies), :func:`check_adapter` /
:func:`check_analysis` run them all, and :func:`parametrize_with_checks` turns them into pytest
cases. They work on classes that live outside vidinterp: the adapter under test is put first
with :func:`vidinterp.registry.using_adapter`, so it need not be registered; its tiny variants
are those registered for its family (:func:`vidinterp.testing.register_tiny`) unless
``adapter_checks`` / ``check_adapter`` are given ``tiny={variant name: zero-argument builder}``,
and the planted checks use the planted builder registered for its family
(:func:`vidinterp.testing.register_planted`)::

    from vidinterp.testing import parametrize_with_checks

    @parametrize_with_checks([MyAdapter, MyAnalysis])
    def test_conformance(check):
        check()

Adapter checks test mechanics (stable site names, bit-identical generation, restore on error,
geometry from config and inputs, documented hook layouts, every default analysis runs) and
results: the renoise step equals the pipeline's own first denoising step bit for bit,
``timesteps_for`` equals the pipeline's schedule, only the conditional CFG branch is analysed,
and on the family's planted model every map method points at the planted word's object in
every frame (IoU >= 0.9 at the per-frame mean threshold, also at pixel resolution), QK peaks
land in the object, the motion head ranks first and lambda2 orders the planted layers.

Analysis checks test that results are labelled Datasets, that runs merge, that no ``P x P``
tensor is allocated, float32 results under a bfloat16 model, that the analysis reads nothing it
does not declare in ``requires`` (everything else, the unconditional rows included, is NaN in
its visits), that it runs on every family whose site kinds it reads, and that its
``(concept, frame, y, x)`` maps localise the planted words on every planted family it reads.

A check that does not apply (an analysis that does not merge, an image-to-video pipeline for a
step that needs a text-only call) raises :class:`CheckNotApplicable`, which pytest reports as a
skip with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from vidinterp.testing.adapter_checks import ADAPTER_PLANTED_CHECKS, ADAPTER_VARIANT_CHECKS
from vidinterp.testing.analysis_checks import ANALYSIS_CHECKS, check_planted_localisation
from vidinterp.testing.conformance import CheckNotApplicable, TinyBuilder, tiny_builders

__all__ = [
    "Check",
    "CheckNotApplicable",
    "adapter_checks",
    "analysis_checks",
    "check_adapter",
    "check_analysis",
    "parametrize_with_checks",
]


@dataclass(frozen=True)
class Check:
    """One named check bound to the class it checks (and the tiny variant or planted family it
    runs on). Calling it runs it: it raises ``AssertionError`` naming what was wrong, or
    :class:`CheckNotApplicable` (a pytest skip under pytest)."""

    name: str
    subject: type
    case: str
    function: Callable[..., None]
    arguments: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.subject.__name__}-{self.case}-{self.name}" if self.case else f"{self.subject.__name__}-{self.name}"

    def __call__(self) -> None:
        try:
            self.function(self.subject, *self.arguments)
        except CheckNotApplicable as reason:
            try:
                import pytest
            except ImportError:  # pragma: no cover - outside pytest a not-applicable check passes
                return
            pytest.skip(f"{self.id}: not applicable: {reason}")
        except AssertionError as failure:
            raise AssertionError(f"{self.id} failed: {failure}") from failure


def _name(function: Callable) -> str:
    return function.__name__.removeprefix("check_")


def _tiny_pipeline_registered(adapter_cls, missing: str) -> None:
    raise AssertionError(missing)


def adapter_checks(adapter_cls, tiny: Mapping[str, TinyBuilder] | None = None) -> list[Check]:
    """Every check of an adapter class: the mechanics and result checks once per tiny variant,
    the planted checks on its family's planted model.

    The tiny variants are ``tiny`` (``{variant name: zero-argument builder}``, for an adapter
    whose family has no registered tiny builder) or else the variants registered for the
    adapter's family (:func:`vidinterp.testing.tiny_variants`). With neither, the one check in
    their place, ``tiny_pipeline_registered``, fails saying how to register a builder."""
    try:
        builders = tiny_builders(adapter_cls, tiny)
    except LookupError as missing:
        checks = [Check("tiny_pipeline_registered", adapter_cls, "", _tiny_pipeline_registered, (str(missing),))]
    else:
        checks = [Check(_name(function), adapter_cls, variant_name, function, (build,))
                  for variant_name, build in builders.items() for function in ADAPTER_VARIANT_CHECKS]
    checks += [Check(_name(function), adapter_cls, "planted", function, (adapter_cls.family,))
               for function in ADAPTER_PLANTED_CHECKS]
    return checks


def analysis_checks(analysis_cls) -> list[Check]:
    """Every check of an analysis class; for map analyses (``group == "maps"``) also the planted
    localisation, once per planted family whose site kinds it reads."""
    from vidinterp.registry import adapter_class
    from vidinterp.testing.planted import planted_families, planted_pipeline

    checks = [Check(_name(function), analysis_cls, "", function) for function in ANALYSIS_CHECKS]
    if analysis_cls.group != "maps":
        return checks
    for family in planted_families():
        pipe = planted_pipeline(family)
        kinds = {spec.kind for spec in adapter_class(family)(pipe).site_specs()}
        if kinds & set(analysis_cls.site_kinds) and analysis_cls.min_frames <= pipe.vidinterp_planted.token_frames:
            checks.append(Check(_name(check_planted_localisation), analysis_cls, family, check_planted_localisation,
                                (family,)))
    return checks


def _checks_of(cls) -> list[Check]:
    from vidinterp.adapter import Adapter
    from vidinterp.analysis import Analysis

    if isinstance(cls, type) and issubclass(cls, Adapter):
        return adapter_checks(cls)
    if isinstance(cls, type) and issubclass(cls, Analysis):
        return analysis_checks(cls)
    raise TypeError(f"conformance checks take Adapter or Analysis subclasses, got {cls!r}")


def _run_all(checks: list[Check]) -> list[str]:
    """Run ``checks``; return the ids of those that do not apply. Raises on the first failure."""
    skipped = []
    for check in checks:
        try:
            check.function(check.subject, *check.arguments)
        except CheckNotApplicable:
            skipped.append(check.id)
        except AssertionError as failure:
            raise AssertionError(f"{check.id} failed: {failure}") from failure
    return skipped


def check_adapter(adapter_cls, tiny: Mapping[str, TinyBuilder] | None = None) -> list[str]:
    """Run every adapter check on ``adapter_cls`` (which need not be registered), on the tiny
    variants ``tiny`` or those registered for its family (see :func:`adapter_checks`). Raises
    ``AssertionError`` naming the first failing check; returns the ids of checks that do not
    apply."""
    return _run_all(adapter_checks(adapter_cls, tiny))


def check_analysis(analysis_cls) -> list[str]:
    """Run every analysis check on ``analysis_cls``. Raises ``AssertionError`` naming the first
    failing check; returns the ids of checks that do not apply."""
    return _run_all(analysis_checks(analysis_cls))


def parametrize_with_checks(classes: Iterable[type]):
    """A ``pytest.mark.parametrize`` over every check of every class (adapters and analyses),
    one test case per check, named ``<Class>-<variant>-<check>``."""
    import pytest

    checks = [check for cls in classes for check in _checks_of(cls)]
    return pytest.mark.parametrize("check", checks, ids=[check.id for check in checks])
