"""Each public conformance check fails on the bug it is about: deliberately broken adapters and
analyses, each caught by a named check (the unbroken classes pass the same checks in the
conformance suites)."""

from __future__ import annotations

import dataclasses

import pytest

from vidinterp.adapters.cogvideox import CogVideoXAdapter
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.gramcol import GramCol
from vidinterp.layout import causal_frame_spans
from vidinterp.testing import adapter_checks, analysis_checks


class UnconditionalRowsAnalysed(CogVideoXAdapter):
    """Declares that the pipeline does not stack its CFG branches, so the unconditional rows of a
    stacked call are analysed too."""

    def cfg_batched(self, guidance_scale):
        return False


class TimestepScaled(CogVideoXAdapter):
    """Calls the transformer with the timestep divided by 1000 when renoising."""

    def denoiser(self, prompt, latents, guidance_scale, negative_prompt):
        call = super().denoiser(prompt, latents, guidance_scale, negative_prompt)
        return lambda current, timestep: call(current, timestep / 1000)


class FramesTransposed(CogVideoXAdapter):
    """Reads the visual tokens as (row, frame, column) instead of (frame, row, column)."""

    def call_layout(self, arguments, pixel_frames):
        layout = super().call_layout(arguments, pixel_frames)
        return dataclasses.replace(layout, frames=layout.height, height=layout.frames,
                                   frame_spans=causal_frame_spans(layout.height, self.temporal_compression))


class RowsAndColumnsSwapped(CogVideoXAdapter):
    """Reads each frame's tokens as (column, row)."""

    def call_layout(self, arguments, pixel_frames):
        layout = super().call_layout(arguments, pixel_frames)
        return dataclasses.replace(layout, height=layout.width, width=layout.height)


class FrameSpansReversed(CogVideoXAdapter):
    """Maps token frames to the pixel frames of the opposite end of the clip."""

    def call_layout(self, arguments, pixel_frames):
        layout = super().call_layout(arguments, pixel_frames)
        return dataclasses.replace(layout, frame_spans=tuple(reversed(layout.frame_spans)))


class RequiresMissing(CrossAttention):
    """Reads the concept keys without declaring them."""

    name = "cross_attention_requires_missing"
    requires = (("q", "visual"),)


class MapRowsAndColumnsSwapped(GramCol):
    """Returns each frame's map transposed (rows for columns)."""

    name = "gramcol_transposed"

    def visit_map(self, visit):
        maps = super().visit_map(visit)  # [C, F*h*w]
        layout = visit.layout
        grid = maps.reshape(-1, layout.frames, layout.height, layout.width).transpose(-1, -2)
        return grid.reshape(maps.shape[0], -1)


def named_check(checks, name: str, case: str):
    [check] = [check for check in checks if check.name == name and check.case == case]
    return check


ADAPTER_MUTANTS = [
    (UnconditionalRowsAnalysed, "only_conditional_branch_analysed", "5b"),
    (TimestepScaled, "renoise_step_matches_pipeline_step", "5b"),
    (FramesTransposed, "planted_maps_localise", "planted"),
    (RowsAndColumnsSwapped, "planted_maps_localise", "planted"),
    (FrameSpansReversed, "planted_pixel_maps", "planted"),
]


@pytest.mark.parametrize("mutant, check_name, case", ADAPTER_MUTANTS, ids=[m.__name__ for m, _, _ in ADAPTER_MUTANTS])
def test_broken_adapter_fails_its_check(mutant, check_name, case):
    check = named_check(adapter_checks(mutant), check_name, case)
    with pytest.raises(AssertionError, match=f"{mutant.__name__}-{case}-{check_name} failed"):
        check()
    unbroken = named_check(adapter_checks(CogVideoXAdapter), check_name, case)
    unbroken()


ANALYSIS_MUTANTS = [
    (RequiresMissing, "reads_only_what_it_requires", ""),
    (MapRowsAndColumnsSwapped, "planted_localisation", "cogvideox"),
]


@pytest.mark.parametrize("mutant, check_name, case", ANALYSIS_MUTANTS, ids=[m.__name__ for m, _, _ in ANALYSIS_MUTANTS])
def test_broken_analysis_fails_its_check(mutant, check_name, case):
    check = named_check(analysis_checks(mutant), check_name, case)
    with pytest.raises(AssertionError, match=f"{mutant.__name__}-{case + '-' if case else ''}{check_name} failed"):
        check()
