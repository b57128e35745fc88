"""CFG branches: the rows an analysis reads follow what the pipeline announces
(``cache_context``), with one fallback; the branch is an explicit option; hooks see it."""

from __future__ import annotations

import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.branches import branch_rows
from vidinterp.testing.recorder import VisitRecorder

PROMPT, NEGATIVE = "a red dog walking on green grass", "a blue dog sleeping in a white room"


@pytest.mark.parametrize("announced, batch, batched, branch, expected", [
    ("cond", 2, None, "conditional", slice(0, 2)),
    ("cond", 2, True, "unconditional", None),
    ("uncond", 1, None, "conditional", None),
    ("uncond", 1, False, "unconditional", slice(0, 1)),
    ("cond_uncond", 4, True, "conditional", slice(2, 4)),
    ("cond_uncond", 4, True, "unconditional", slice(0, 2)),
    ("cond_uncond", 1, False, "conditional", slice(0, 1)),    # CogVideoX names every call so, also without CFG
    ("cond_uncond", 1, False, "unconditional", None),
    ("cond_uncond", 2, None, "conditional", slice(1, 2)),     # unknown batching: an even batch is stacked
    ("cond_uncond", 3, None, "conditional", slice(0, 3)),
    (None, 2, True, "conditional", slice(1, 2)),              # nothing announced: the driver's word
    (None, 2, False, "conditional", slice(0, 2)),
    (None, 2, None, "unconditional", None),
])
def test_branch_rows(announced, batch, batched, branch, expected):
    assert branch_rows(announced, batch, batched, branch) == expected


def test_unknown_branch_is_refused():
    with pytest.raises(ValueError, match=r"branch must be one of \('conditional', 'unconditional'\), got 'negative'"):
        branch_rows("cond", 1, None, "negative")
    with pytest.raises(ValueError, match="branch must be one of"):
        vidinterp.trace(vidinterp.testing.tiny_pipeline("cogvideox"), prompt=PROMPT, concepts=["dog"],
                        num_inference_steps=2, branch="negative")



@pytest.mark.parametrize("family", ["cogvideox", "wan", "hunyuan_video"])
def test_the_unconditional_branch_is_the_negative_prompts_conditional_one(family):
    """Analysing the unconditional branch of a CFG run reads what the conditional branch of a
    run prompted with the negative prompt reads (stacked rows for CogVideoX, separate calls for
    Wan and HunyuanVideo's true CFG)."""
    pipe = vidinterp.testing.tiny_pipeline(family)
    adapter = vidinterp.adapter_for(pipe)
    branch = adapter.unconditional_branch(3.0)
    guidance = branch.pop("guidance_scale", None)
    runs = []
    for options in (dict(prompt=PROMPT, negative_prompt=NEGATIVE, branch="unconditional", guidance_scale=guidance,
                         pipeline_kwargs=branch),
                    dict(prompt=NEGATIVE, guidance_scale=1.0 if guidance else None)):
        recorder = VisitRecorder(keep=[("q", "visual"), ("z", "visual")])
        vidinterp.trace(pipe, concepts=["dog"], analyses=[recorder],
                        num_inference_steps=2, steps=[0], **options)
        runs.append(recorder.tensors)
    unconditional, negative = runs
    assert unconditional.keys() == negative.keys() and unconditional
    for key, tensors in unconditional.items():
        torch.testing.assert_close(tensors, negative[key], rtol=1e-4, atol=1e-5)


def test_hooked_runs_the_concept_stream_on_the_conditional_rows_only():
    """Under hooked(), where no trace tells the guidance, the pipeline's announcement of a stacked
    CFG call decides: the concept stream runs on its conditional half."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    shapes = []
    with vidinterp.hooked(pipe, concepts=["dog"]) as graph:
        graph.module("blocks.0.attn.hook_concept_q").register_forward_hook(
            lambda module, args, output: shapes.append(tuple(output.shape)))
        pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=6.0, num_frames=9, height=32, width=48,
             max_sequence_length=16, output_type="np")
    assert shapes == [(1, 2, 1, 16)] * 2


def test_hooks_that_take_a_context_see_step_branch_and_rows():
    pipe = vidinterp.testing.tiny_pipeline("wan")
    seen = []

    def record(module, args, output, context):
        seen.append((context.name, context.site.name, context.step, context.announced, context.analysed_rows))

    def ablate_unconditional(module, args, output, context):
        return torch.zeros_like(output) if context.announced == "uncond" else output

    vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2, steps=[1], guidance_scale=3.0,
                    negative_prompt=NEGATIVE, hooks={"blocks.0.attn.hook_q": record, "blocks.1.attn.hook_z": ablate_unconditional})
    assert seen == [
        ("blocks.0.attn.hook_q", "blocks.0.attn", 0, "cond", None),       # step 0 is not analysed
        ("blocks.0.attn.hook_q", "blocks.0.attn", 0, "uncond", None),
        ("blocks.0.attn.hook_q", "blocks.0.attn", 1, "cond", slice(0, 1)),
        ("blocks.0.attn.hook_q", "blocks.0.attn", 1, "uncond", None),
    ]
