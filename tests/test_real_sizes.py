"""Published model sizes without a GPU (issue 22): the published transformer configurations on fake
tensors, the FLOPs a trace adds to one forward, and no ``P x P`` tensor allocated by vidinterp
(``benchmarks/real_sizes.py`` runs every model at full size)."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from torch._subclasses.fake_tensor import FakeTensorMode

from vidinterp.analysis import Analysis
from vidinterp.testing.real_configs import REAL_MODELS, parameter_count, real_pipeline

from benchmark_scripts import load_benchmark


#: Transformer parameter counts as the model cards / papers state them.
PUBLISHED_PARAMETERS = {
    "cogvideox-5b": 5.6e9,        # CogVideoX-5B transformer
    "cogvideox1.5-5b": 5.6e9,     # same blocks, temporal patch 2
    "hunyuanvideo": 13e9,         # "13B parameters" (HunyuanVideo paper)
    "wan2.1-14b": 14e9,           # Wan2.1-T2V-14B
    "flux.1-dev": 11.9e9,         # "12B", 11.9B in the transformer
    "sd3.5-large": 8.1e9,         # "8.1 billion parameters" (model card)
}


@pytest.fixture(scope="module")
def real_sizes():
    return load_benchmark("real_sizes.py")


def test_published_configs_have_the_published_parameter_counts():
    with FakeTensorMode(allow_non_fake_inputs=True):
        counts = {name: parameter_count(real_pipeline(name).transformer) for name in PUBLISHED_PARAMETERS}
    for name, published in PUBLISHED_PARAMETERS.items():
        assert abs(counts[name] / published - 1) < 0.05, (name, counts[name], published)
    assert set(REAL_MODELS) >= set(PUBLISHED_PARAMETERS)


def test_real_pipeline_refuses_to_allocate_a_real_model():
    with pytest.raises(RuntimeError, match="FakeTensorMode"):
        real_pipeline("cogvideox-2b", layers=1)


@pytest.mark.parametrize("name", ["cogvideox-5b", "wan2.1-14b"])
def test_a_trace_adds_about_c_over_p_of_the_attention_flops_and_no_p_by_p_tensor(real_sizes, name):
    """Published width and native geometry, two blocks. The extra FLOPs stay under the analysis'
    leading-order bound (``extra_flop_bound``: ``4.5 C/P`` of the attention for the concept and
    query matching passes, ``~0.8 (s/P)^2`` for the silhouette's ``s = 512`` points, ``C/S`` of
    the dense work for the concept stream; about 1e-3 at these sizes) with a 10% margin for the
    lower-order terms it leaves out (e.g. the concept stream recomputing each block's modulation
    from ``temb``)."""
    row = real_sizes.run_model(name, layers=2)
    visual = row["visual_tokens"]
    assert row["geometry"] == list(REAL_MODELS[name].geometry) and visual > 10_000
    assert row["visited_steps"] == 1
    assert row["flops_traced"] > row["flops_plain"]  # the analyses did run
    extra, bound = row["flop_ratio"] - 1, row["flop_ratio_bound"] - 1
    assert extra <= 1.1 * bound and bound < 2e-3
    assert row["peak_ratio"] < 1.05
    assert abs(row["peak_bytes_plain"] / row["peak_bytes_plain_memtracker"] - 1) < 0.05  # torch's tracker agrees
    assert row["pp_violations"] == []
    assert row["largest_vidinterp"]["numel"] < visual * visual
    assert row["largest_vidinterp_extra"]["numel"] > 0  # allocations in analyses are seen


class PlantedSquare(Analysis):
    """A faulty analysis: allocates one ``P x P`` tensor at its first visit."""

    name = "planted_square"
    requires = (("z", "visual"),)
    site_kinds = ("joint", "self", "cross")

    def reset(self) -> None:
        self.square = None

    def update(self, visit) -> None:
        if self.square is None:
            visual = visit.get("z", "visual")
            self.square = visual.new_zeros(visual.shape[2], visual.shape[2])

    def result(self) -> xr.Dataset:
        return xr.Dataset()


def test_the_p_by_p_check_catches_an_analysis_that_allocates_one(real_sizes):
    row = real_sizes.run_model("cogvideox-5b", layers=1, analyses=[], extra_analyses=[PlantedSquare()],
                               cross_check=False)
    visual = row["visual_tokens"]
    assert [violation["numel"] for violation in row["pp_violations"]] == [visual * visual]
    assert "test_real_sizes.py:update" in row["pp_violations"][0]["where"]
    assert row["largest_vidinterp_extra"]["shape"] == [visual, visual]


def test_allocation_owner_tells_vidinterp_work_from_the_model(real_sizes):
    """Ops asked for by an analysis are vidinterp's, by a diffusers module the model's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    owners = []

    class Owners(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import sys

            owners.append(real_sizes.allocation_owner(sys._getframe(1))[0])
            return func(*args, **(kwargs or {}))

    from vidinterp.analyses.cross_attention import CrossAttention
    from vidinterp.testing.tiny import random_visit

    visit = random_visit()
    with Owners():
        torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert owners and set(owners) == {"driver"}
    owners.clear()
    from diffusers.models.normalization import RMSNorm

    norm, ones = RMSNorm(3, eps=1e-6), torch.ones(2, 3)
    with Owners():
        norm(ones)
    assert owners and set(owners) == {"model"}
    owners.clear()
    analysis = CrossAttention()
    with Owners():
        analysis.visit_map(visit)
    assert owners and set(owners) == {"vidinterp:extra"}
