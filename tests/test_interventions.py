"""Cross-frame attention guidance (``vidinterp.interventions``): the frame-local attention equals a
brute-force dense masked softmax and forms no dense tensor; through the real pipelines, scale 0 is
plain sampling bit for bit, a positive scale changes the video by exactly
``eps_c + s/w (eps_c - eps_ptb)`` on the conditional rows; the perturbed branch is never analysed;
the model is restored afterwards."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vidinterp
import vidinterp.interventions as interventions
import vidinterp.testing
from vidinterp import CrossFrameGuidance
from vidinterp.branches import listen_for_branches
from vidinterp.install import call_arguments, installed
from vidinterp.interventions import PERTURBED_BRANCH, cfg_weight, frame_local_attention
from vidinterp.processors import SiteProcessor
from vidinterp.runtime import Runtime
from vidinterp.testing.conformance import PROMPT, generate, processors_of, required_inputs, video_of
from vidinterp.testing.recorder import VisitRecorder
from vidinterp.trace import _default_guidance

FAMILIES = ["cogvideox", "hunyuan_video", "wan", "skyreels_v2", "ltx", "mochi"]
NEGATIVE = "a blue cat sleeping"


def dense_frame_local(query, key, value, *, frames, visual, prompt=None, prompt_mask=None):
    """Brute force: the dense ``N x N`` mask (query i may see key j when either is a prompt token
    or both are visual tokens of one frame; masked prompt slots never as keys) and a float64
    masked softmax."""
    batch, _, tokens, dim = query.shape
    frame = torch.full((tokens,), -1)
    count = visual.stop - visual.start
    frame[visual] = torch.arange(count) // (count // frames)
    is_prompt = torch.zeros(tokens, dtype=torch.bool)
    if prompt is not None:
        is_prompt[prompt] = True
    allowed = is_prompt[:, None] | is_prompt[None, :] | ((frame[:, None] == frame[None, :]) & (frame[:, None] >= 0))
    allowed = allowed[None].repeat(batch, 1, 1)
    if prompt_mask is not None:
        usable = torch.ones(batch, tokens, dtype=torch.bool)
        usable[:, prompt] = prompt_mask.cpu()
        allowed &= usable[:, None, :]
    scores = query.double() @ key.double().transpose(-1, -2) / math.sqrt(dim)
    scores = scores.masked_fill(~allowed[:, None].to(scores.device), float("-inf"))
    return (scores.softmax(dim=-1) @ value.double()).to(query.dtype)


class LargestTensor(TorchDispatchMode):
    """The largest tensor any operation produces while active, and its shape."""

    def __init__(self) -> None:
        super().__init__()
        self.largest, self.shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for item in tree_flatten(output)[0]:
            if isinstance(item, torch.Tensor) and item.numel() > self.largest:
                self.largest, self.shape = item.numel(), tuple(item.shape)
        return output


# ------------------------------------------------------------------ the kernel
@pytest.mark.parametrize("case", ["joint_prompt_first", "joint_visual_first_masked", "self", "one_frame"])
def test_frame_local_attention_equals_dense_masked_softmax(case):
    generator = torch.Generator().manual_seed(0)
    batch, heads, dim, frames, per_frame, text = 2, 3, 8, 3, 4, 5
    options = {}
    if case == "joint_prompt_first":
        options = dict(visual=slice(text, text + frames * per_frame), prompt=slice(0, text))
    elif case == "joint_visual_first_masked":
        options = dict(visual=slice(0, frames * per_frame), prompt=slice(frames * per_frame, frames * per_frame + text),
                       prompt_mask=torch.arange(text)[None] < torch.tensor([[2], [5]]))
    elif case == "self":
        text, options = 0, dict(visual=slice(0, frames * per_frame))
    else:
        frames, options = 1, dict(visual=slice(text, text + per_frame), prompt=slice(0, text))
    tokens = frames * per_frame + text if case != "one_frame" else per_frame + text
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3))
    ours = frame_local_attention(q, k, v, frames=frames, **options)
    torch.testing.assert_close(ours, dense_frame_local(q, k, v, frames=frames, **options), rtol=1e-5, atol=1e-6)
    if case == "one_frame":  # one frame: plain full attention
        torch.testing.assert_close(ours, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    else:  # and it differs from full attention: cross-frame keys are dropped
        assert not torch.allclose(ours, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-3)


def test_frame_local_attention_builds_no_dense_tensor():
    frames, per_frame, text = 4, 256, 16
    tokens = frames * per_frame + text
    q, k, v = (torch.randn(1, 1, tokens, 8) for _ in range(3))
    options = dict(frames=frames, visual=slice(text, tokens), prompt=slice(0, text),
                   prompt_mask=torch.arange(text)[None] < 9)
    ours, dense = LargestTensor(), LargestTensor()
    with ours:
        frame_local_attention(q, k, v, **options)
    with dense:  # the positive control: the brute force forms N x N
        dense_frame_local(q, k, v, **options)
    assert dense.largest >= tokens * tokens
    assert ours.largest < tokens * tokens // 2, f"largest tensor {ours.shape} for N = {tokens}"


# ------------------------------------------------------------------ settings
def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        CrossFrameGuidance(scale=-1.0)
    with pytest.raises(ValueError, match="non-empty list of layer indices"):
        CrossFrameGuidance(layers=[])
    with pytest.raises(TypeError, match="layers must be None or integers"):
        CrossFrameGuidance(layers="3")
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    trace = dict(prompt=PROMPT, concepts=["dog"], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"layers \[7\] have no joint or self-attention site.*layers with one: 0\.\.1"):
        vidinterp.trace(pipe, interventions=[CrossFrameGuidance(layers=[0, 7])], **trace)
    with pytest.raises(TypeError, match="interventions must be a list of Intervention instances"):
        vidinterp.trace(pipe, interventions=CrossFrameGuidance(), **trace)
    with pytest.raises(ValueError, match="one CrossFrameGuidance"):
        vidinterp.trace(pipe, interventions=[CrossFrameGuidance(), CrossFrameGuidance()], **trace)
    with pytest.raises(ValueError, match="constant CFG weight"):
        vidinterp.trace(pipe, interventions=[CrossFrameGuidance()], pipeline_kwargs={"use_dynamic_cfg": True}, **trace)
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        vidinterp.trace(pipe, interventions=[CrossFrameGuidance()], num_frames=1, **trace)
    assert all(not isinstance(processor, SiteProcessor) for processor in processors_of(vidinterp.adapter_for(pipe)))


def test_image_models_are_refused():
    pipe = vidinterp.testing.tiny_pipeline("flux")
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2,
                        interventions=[CrossFrameGuidance()])


def test_cfg_weight_follows_the_pipeline_call():
    cog = vidinterp.adapter_for(vidinterp.testing.tiny_pipeline("cogvideox"))
    assert cfg_weight(cog, 6.0, None, {}, "generation") == 6.0
    assert cfg_weight(cog, 1.0, None, {}, "generation") == 1.0
    assert cfg_weight(cog, 0.5, None, {}, "generation") == 1.0   # no CFG branch below 1 either
    hunyuan = vidinterp.adapter_for(vidinterp.testing.tiny_pipeline("hunyuan_video"))
    assert cfg_weight(hunyuan, 6.0, None, {}, "generation") == 1.0  # embedded guidance only
    assert cfg_weight(hunyuan, 6.0, NEGATIVE, {"true_cfg_scale": 3.0}, "generation") == 3.0
    assert cfg_weight(hunyuan, 6.0, None, {"true_cfg_scale": 3.0}, "generation") == 1.0  # true CFG needs a negative
    assert cfg_weight(hunyuan, 6.0, NEGATIVE, {"true_cfg_scale": 3.0}, "renoise") == 1.0


# ------------------------------------------------------------------ through the real pipelines
def assert_restored(pipe, adapter, originals):
    assert all(now is before for now, before in zip(processors_of(adapter), originals)), "processors not restored"
    transformer = adapter.transformer
    assert not transformer._forward_pre_hooks and not transformer._forward_hooks, "torch hooks left behind"
    registry = getattr(transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks, "diffusers hooks left behind"
    assert not [name for name in transformer._modules if name.startswith("vidinterp")]


@pytest.mark.parametrize("family", ["cogvideox", "hunyuan_video", "wan"])
def test_scale_zero_is_plain_sampling_bit_for_bit(family):
    pipe = vidinterp.testing.tiny_pipeline(family)
    adapter = vidinterp.adapter_for(pipe)
    untraced = video_of(generate(pipe, adapter, steps=2))
    options = dict(prompt=PROMPT, concepts=["dog"], num_inference_steps=2, seed=0,
                   pipeline_kwargs=required_inputs(pipe, adapter))
    plain = vidinterp.trace(pipe, **options).video
    zero = vidinterp.trace(pipe, interventions=[CrossFrameGuidance(scale=0.0)], **options)
    assert np.array_equal(plain, untraced)
    assert np.array_equal(zero.video, untraced)
    assert zero.attrs["interventions"] == "CrossFrameGuidance(scale=0.0, layers=None)"


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_changes_the_video_and_restores_the_model(family):
    pipe = vidinterp.testing.tiny_pipeline(family)
    assert type(pipe).__module__.startswith("diffusers.pipelines.")  # the real pipeline class
    adapter = vidinterp.adapter_for(pipe)
    originals = processors_of(adapter)
    options = dict(prompt=PROMPT, concepts=["dog"], num_inference_steps=2, seed=0,
                   pipeline_kwargs=required_inputs(pipe, adapter))
    plain = vidinterp.trace(pipe, **options).video
    guided = vidinterp.trace(pipe, interventions=[CrossFrameGuidance(scale=3.0)], **options).video
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)
    assert_restored(pipe, adapter, originals)
    assert np.array_equal(vidinterp.trace(pipe, **options).video, plain)


def test_model_restored_after_an_error_in_the_perturbed_branch():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    adapter = vidinterp.adapter_for(pipe)
    originals = processors_of(adapter)
    reference = video_of(generate(pipe, adapter, steps=2))

    def explode(module, args, output, context):
        if context.announced == PERTURBED_BRANCH:
            raise RuntimeError("boom in the perturbed branch")

    with pytest.raises(RuntimeError, match="boom in the perturbed branch"):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2,
                        hooks={"blocks.1.attn.hook_z": explode}, interventions=[CrossFrameGuidance(layers=[1])])
    assert_restored(pipe, adapter, originals)
    assert np.array_equal(video_of(generate(pipe, adapter, steps=2)), reference)


def test_the_perturbed_branch_is_never_analysed():
    """The analysed (conditional) pass is unchanged by the guidance, so step 0's visits and maps
    are the same with and without it: the perturbed pass reached no analysis."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    results = []
    for extra in ([], [CrossFrameGuidance(scale=2.0)]):
        recorder = VisitRecorder(keep=[("q", "visual")])
        trace = vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2, steps=[0],
                                analyses=[recorder, "cross_attention"], interventions=extra)
        results.append((recorder, trace.maps))
    (plain, plain_maps), (guided, guided_maps) = results
    assert guided.visits == plain.visits
    assert all(torch.equal(a, b) for key in plain.tensors for a, b in zip(plain.tensors[key], guided.tensors[key]))
    assert plain_maps.equals(guided_maps)


@contextmanager
def probed_perturbed_calls(probe):
    """Run every perturbed transformer call of CrossFrameGuidance under ``probe``."""
    announcing = interventions._announcing

    @contextmanager
    def probed(transformer, name):
        with announcing(transformer, name), probe:
            yield

    interventions._announcing = probed
    try:
        yield
    finally:
        interventions._announcing = announcing


def test_the_perturbed_pass_builds_no_dense_tensor():
    """The whole perturbed transformer call, every layer frame-local, at 1,152 visual tokens:
    no tensor of ``(P+T)^2 / 2`` elements per head."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    heads = pipe.transformer.config.num_attention_heads
    probe = LargestTensor()
    with probed_perturbed_calls(probe):
        trace = vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2, steps=[1],
                                height=128, width=192, analyses=["cross_attention"],
                                interventions=[CrossFrameGuidance(scale=1.0)])
    tokens = 3 * 16 * 24 + 16
    assert trace.video.shape[1:3] == (128, 192)
    assert probe.largest > 0, "no perturbed call ran"
    assert probe.largest < heads * tokens * tokens // 2, f"largest tensor {probe.shape}, N = {tokens}"


# ------------------------------------------------------------------ the formula, call by call
def first_step_calls(pipe, adapter, **extra):
    """``(announced, args, kwargs)`` of every transformer call of one pipeline step."""
    calls = []

    def record(module, args, kwargs, announced):
        if announced not in [name for name, _, _ in calls]:  # a repeated branch: the next step
            calls.append((announced, args, kwargs))

    listener = listen_for_branches(pipe.transformer, record, lambda: None)
    try:
        generate(pipe, adapter, steps=2, **extra)
    finally:
        listener.remove()
    return calls


def dense_perturbed(pipe, adapter, layers, args, kwargs):
    """The transformer output with the chosen layers' attention replaced, through public hook
    points, by the brute-force dense frame-local attention."""
    layout = adapter.call_layout(call_arguments(pipe.transformer, args, kwargs), None)
    with vidinterp.hooked(pipe) as graph:
        for spec in graph.specs:
            if spec.layer not in layers or spec.kind not in ("joint", "self"):
                continue
            seen = {}

            def keep(name, seen=seen):
                return lambda module, inputs, output: seen.__setitem__(name, output)

            def replace(module, inputs, output, seen=seen, joint=spec.kind == "joint"):
                return dense_frame_local(
                    seen["q"], seen["k"], seen["v"], frames=layout.frames,
                    visual=layout.visual if joint else slice(0, layout.visual_tokens),
                    prompt=layout.prompt if joint else None, prompt_mask=layout.prompt_mask if joint else None)

            for name in "qkv":
                graph.module(f"{spec.name}.hook_{name}").register_forward_hook(keep(name))
            graph.module(f"{spec.name}.hook_z").register_forward_hook(replace)
        with pipe.transformer.cache_context("cond"):
            return pipe.transformer(*args, **kwargs)[0]


FORMULA_CASES = {  # family: (layers, extra pipe(...) arguments)
    "cogvideox": ([1], {}),
    "hunyuan_video": ([1, 2], {"negative_prompt": NEGATIVE, "true_cfg_scale": 3.0}),  # double and single blocks
    "wan": ([0], {}),
    "skyreels_v2": ([1], {}),
    "ltx": ([0], {}),
    "mochi": ([1], {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_guided_output_is_the_cag_formula(family):
    """Per transformer call: conditional rows become ``eps_c + s/w (eps_c - eps_ptb)`` with
    ``eps_ptb`` from a dense brute-force perturbed model; unconditional rows are untouched."""
    layers, extra = FORMULA_CASES[family][0], dict(FORMULA_CASES[family][1])
    pipe = vidinterp.testing.tiny_pipeline(family)
    adapter = vidinterp.adapter_for(pipe)
    transformer, scale = pipe.transformer, 1.5
    calls = first_step_calls(pipe, adapter, **extra)
    guidance = _default_guidance(pipe)
    negative = extra.pop("negative_prompt", None)
    weight = cfg_weight(adapter, guidance, negative, extra, "generation")
    assert weight > 1  # every case runs CFG: the s / w path

    def run():
        outputs = []
        for announced, args, kwargs in calls:
            with transformer.cache_context(announced):
                outputs.append(transformer(*args, **kwargs)[0])
        return outputs

    with torch.no_grad():
        plain = run()
        runtime = Runtime()
        runtime.cfg_batched = adapter.cfg_batched(guidance)
        cag = CrossFrameGuidance(scale=scale, layers=layers)
        with installed(adapter, runtime) as graph, cag.applied(adapter, runtime, graph, weight):
            guided = run()
        checked = 0
        for (announced, args, kwargs), eps, out in zip(calls, plain, guided):
            batch = eps.shape[0]
            if announced == "uncond":
                assert torch.equal(out, eps)
                continue
            rows = slice(batch // 2, batch) if runtime.cfg_batched else slice(0, batch)
            cond_args = tuple(interventions._rows(a, rows, batch) for a in args)
            cond_kwargs = {name: interventions._rows(a, rows, batch) for name, a in kwargs.items()}
            perturbed = dense_perturbed(pipe, adapter, layers, cond_args, cond_kwargs)
            expected = eps[rows] + scale / weight * (eps[rows] - perturbed)
            assert not torch.allclose(perturbed, eps[rows], atol=1e-4), "the perturbation changed nothing"
            torch.testing.assert_close(out[rows], expected, rtol=1e-4, atol=1e-4)
            assert torch.equal(out[:rows.start], eps[:rows.start])
            checked += 1
        assert checked == 1


def test_a_cfg_weight_that_does_not_match_the_pipeline_is_an_error():
    pipe = vidinterp.testing.tiny_pipeline("wan")
    adapter = vidinterp.adapter_for(pipe)
    originals = processors_of(adapter)
    calls = first_step_calls(pipe, adapter)
    assert [announced for announced, _, _ in calls] == ["cond", "uncond"]
    cag = CrossFrameGuidance(scale=1.0, layers=[0])
    with torch.no_grad():
        runtime = Runtime()
        runtime.cfg_batched = False
        with pytest.raises(RuntimeError, match=r"ran an unconditional branch \(call announced as .uncond.\) although its CFG weight was taken as 1"):
            with installed(adapter, runtime) as graph, cag.applied(adapter, runtime, graph, 1.0):
                for announced, args, kwargs in calls:
                    with pipe.transformer.cache_context(announced):
                        pipe.transformer(*args, **kwargs)
        with pytest.raises(RuntimeError, match="ran no unconditional branch although its CFG weight was taken as 5"):
            with installed(adapter, runtime) as graph, cag.applied(adapter, runtime, graph, 5.0):
                announced, args, kwargs = calls[0]
                with pipe.transformer.cache_context(announced):
                    pipe.transformer(*args, **kwargs)
    assert_restored(pipe, adapter, originals)
