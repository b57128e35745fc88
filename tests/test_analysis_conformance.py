"""The analysis conformance suite: every registered analysis passes every public check of
:mod:`vidinterp.testing.checks` unchanged (labelled results, merging, no ``P x P`` tensor,
float32 under bfloat16, reads only what it declares, runs on every family it reads, localises
the planted words on every planted family it reads)."""

from __future__ import annotations

import vidinterp
from vidinterp.testing import parametrize_with_checks


@parametrize_with_checks(sorted(vidinterp.analysis_classes().values(), key=lambda cls: cls.name))
def test_analysis(check):
    check()
