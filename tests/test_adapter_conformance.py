"""The adapter conformance suite: every registered adapter passes every public check of
:mod:`vidinterp.testing.checks` (mechanics on each tiny variant, results on each tiny variant and
on its family's planted model) unchanged, as a third-party adapter would run them."""

from __future__ import annotations

import vidinterp
from vidinterp.testing import parametrize_with_checks


@parametrize_with_checks(sorted(vidinterp.adapter_classes().values(), key=lambda cls: cls.family))
def test_adapter(check):
    check()
