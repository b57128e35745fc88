"""Shared fixtures: every registered adapter and its tiny variants."""

from __future__ import annotations

import pytest
import torch

import vidinterp

# Tiny models: one thread avoids oversubscription when several test processes share the cores.
torch.set_num_threads(1)

ADAPTER_CASES = [
    pytest.param(family, variant, kwargs, id=f"{family}-{variant}")
    for family, cls in sorted(vidinterp.adapter_classes().items())
    for variant, kwargs in cls.tiny_variants().items()
]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
