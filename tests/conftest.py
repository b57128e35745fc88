"""Shared test settings: one thread, deterministic algorithms."""

from __future__ import annotations

import pytest
import torch

# Tiny models: one thread avoids oversubscription when several test processes share the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
