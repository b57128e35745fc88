"""Flux adapter: exact stock math, the concept stream against a brute-force oracle, one-frame
geometry, the pipeline's schedule, renoising helpers and true-CFG call detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.registry import adapter_for

PROMPT = "a red dog walking on green grass"
CONCEPTS = ["dog", "grass"]


@pytest.fixture(scope="module", params=["dev", "schnell"])
def pipe(request):
    return vidinterp.testing.tiny_pipeline("flux", variant=request.param)


def _inputs(pipe, height: int = 16, width: int = 16, seed: int = 0) -> dict:
    """Keyword arguments of one transformer call as ``FluxPipeline`` makes them."""
    adapter = adapter_for(pipe)
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt=PROMPT, prompt_2=None,
                                                         max_sequence_length=adapter.max_sequence_length)
    generator = torch.Generator().manual_seed(seed)
    latents, image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, height, width,
                                              prompt_embeds.dtype, torch.device("cpu"), generator)
    guidance = torch.full([1], 3.5) if pipe.transformer.config.guidance_embeds else None
    return dict(hidden_states=latents, timestep=torch.full([1], 0.7), guidance=guidance, pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)


def _run(pipe, **extra) -> torch.Tensor:
    with torch.no_grad():
        return pipe.transformer(**{**_inputs(pipe), **extra})[0]


def test_transformer_output_bit_identical_with_concepts_and_every_hook(pipe):
    reference = _run(pipe)
    fired: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, output):
            fired.setdefault(name, tuple(output.shape))
        return hook

    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        for name in graph.hook_names():
            graph.module(name).register_forward_hook(record(name))
        traced = _run(pipe)
    assert torch.equal(traced, reference)
    assert set(fired) == set(graph.hook_names())
    dual = len(pipe.transformer.transformer_blocks)
    specs = adapter_for(pipe).site_specs()
    assert [spec.concept_stream for spec in specs] == [spec.layer < dual for spec in specs]
    assert [spec.module_path for spec in specs][dual] == "single_transformer_blocks.0.attn"
    tokens = 16 + 16  # prompt + visual
    assert fired["blocks.0.attn.hook_q"] == (1, 2, tokens, 16)
    assert fired[f"blocks.{dual}.attn.hook_z"] == (1, 2, tokens, 16)
    assert fired["blocks.0.attn.hook_concept_z"] == (1, 2, len(CONCEPTS), 16)


def test_concept_stream_matches_masked_brute_force(pipe):
    """Oracle: concepts appended to the prompt stream of the stock model (position ids 0), with an
    attention mask so that nothing attends to them and they attend only to concepts and visual
    tokens. Their per-head outputs and hidden states must match the concept stream."""
    adapter = adapter_for(pipe)
    inputs = _inputs(pipe)
    embeddings = adapter.encode_concepts(CONCEPTS, "first").embeddings
    text, concepts = inputs["encoder_hidden_states"].shape[1], len(CONCEPTS)
    visual = inputs["hidden_states"].shape[1]
    total = text + concepts + visual
    is_concept = torch.zeros(total, dtype=torch.bool)
    is_concept[text:text + concepts] = True
    is_prompt = torch.arange(total) < text
    allowed = ~is_concept[None, :].expand(total, total).clone()
    allowed[is_concept] = ~is_prompt
    oracle = dict(inputs, encoder_hidden_states=torch.cat([inputs["encoder_hidden_states"], embeddings[None]], dim=1),
                  txt_ids=torch.zeros(text + concepts, 3), joint_attention_kwargs={"attention_mask": allowed[None, None]})
    blocks = pipe.transformer.transformer_blocks
    heads = pipe.transformer.config.num_attention_heads
    expected_outputs, expected_hidden = [], []
    handles = []
    for block in blocks:
        handles.append(block.attn.to_add_out.register_forward_pre_hook(
            lambda module, args: expected_outputs.append(args[0][:, text:].unflatten(-1, (heads, -1)).transpose(1, 2))))
        handles.append(block.register_forward_hook(
            lambda module, args, output: expected_hidden.append(output[0][:, text:])))
    try:
        with torch.no_grad():
            pipe.transformer(**oracle)
    finally:
        for handle in handles:
            handle.remove()

    outputs, hidden = [], []
    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        stream = graph["blocks.0.attn"].observer.concepts
        handles = []
        for index, block in enumerate(blocks):
            graph.module(f"blocks.{index}.attn.hook_concept_z").register_forward_hook(
                lambda module, args, output: outputs.append(output))
            handles.append(block.register_forward_hook(lambda module, args, output: hidden.append(stream.hidden)))
        try:
            with torch.no_grad():
                pipe.transformer(**inputs)
        finally:
            for handle in handles:
                handle.remove()
    assert len(outputs) == len(expected_outputs) == len(blocks)
    for got, want in zip(outputs + hidden, expected_outputs + expected_hidden):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_geometry_is_one_frame(pipe):
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == (1, 16, 16)
    with pytest.raises(ValueError, match=r"num_frames must be 1 .*got 2"):
        adapter.check_geometry(2, 16, 16)
    with pytest.raises(ValueError, match="width must be a positive multiple of 4 pixels, got 18"):
        adapter.check_geometry(1, 16, 18)
    layout = adapter.layout_for(1, 16, 24)
    assert (layout.frames, layout.height, layout.width) == (1, 4, 6)
    assert layout.prompt == slice(0, 16) and layout.visual == slice(16, 40)
    assert layout.frame_spans == ((0, 0),) and layout.pixels_per_token == (4, 4)


def test_timesteps_follow_the_pipeline_schedule_for_the_geometry(pipe):
    adapter = adapter_for(pipe)
    seen = {}

    def record(pipeline, index, timestep, callback_kwargs):
        seen.setdefault("timesteps", pipeline.scheduler.timesteps.clone())
        return {}

    pipe(prompt=PROMPT, height=16, width=24, num_inference_steps=4, output_type="latent",
         callback_on_step_end=record, max_sequence_length=adapter.max_sequence_length)
    assert torch.equal(adapter.timesteps_for(4, (1, 16, 24)), seen["timesteps"])
    native = adapter.timesteps(4)  # 16x16: another shift only with dynamic shifting (dev)
    if pipe.scheduler.config.use_dynamic_shifting:
        assert not torch.equal(native, seen["timesteps"])
    else:
        assert torch.equal(native, seen["timesteps"])


def test_renoising_uses_the_schedule_of_the_image_geometry():
    from vidinterp.analyses.cross_attention import CrossAttention

    pipe = vidinterp.testing.tiny_pipeline("flux", variant="dev")
    image = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    trace = vidinterp.trace(pipe, video=image, prompt=PROMPT, concepts=CONCEPTS, num_inference_steps=4,
                            analyses=[CrossAttention()], resample=False)  # 16x24, not the native 16x16
    used = pipe.scheduler.timesteps.clone()
    assert torch.equal(used, adapter_for(pipe).timesteps_for(4, (1, 16, 24)))
    assert not torch.equal(used, adapter_for(pipe).timesteps(4))
    assert dict(trace.maps.sizes) == {"concept": 2, "frame": 1, "y": 4, "x": 6}
    assert trace.attrs["analysed_steps"] == [2]  # ConceptAttention's reference: index 2 of 4


def test_encode_video_and_denoiser_use_pipeline_latent_conventions(pipe):
    adapter = adapter_for(pipe)
    image = torch.rand(1, 3, 16, 24) * 2 - 1
    latents = adapter.encode_video(image, torch.Generator().manual_seed(0))
    vae = pipe.vae
    raw = vae.encode(image).latent_dist.sample(torch.Generator().manual_seed(0))
    assert torch.equal(latents, (raw - vae.config.shift_factor) * vae.config.scaling_factor)
    assert latents.shape == (1, 4, 8, 12)
    denoise = adapter.denoiser(PROMPT, latents, 3.5, None)
    timesteps = adapter.timesteps_for(4, (1, 16, 24))
    with torch.no_grad():
        output = denoise(latents, timesteps[2])
    assert output.shape == latents.shape and torch.isfinite(output).all()


def test_true_cfg_negative_call_is_not_analysed(pipe):
    calls = {"hook_q": 0, "hook_concept_q": 0}
    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        for hook in calls:
            graph.module(f"blocks.0.attn.{hook}").register_forward_hook(
                lambda module, args, output, hook=hook: calls.__setitem__(hook, calls[hook] + 1))
        pipe(prompt=PROMPT, negative_prompt="blue sky", true_cfg_scale=2.0, height=16, width=16,
             num_inference_steps=2, output_type="latent", max_sequence_length=16)
    assert calls == {"hook_q": 4, "hook_concept_q": 2}


def test_multi_token_concept_reductions(pipe):
    adapter = adapter_for(pipe)
    with pytest.warns(UserWarning, match="walking.*2 tokens"):
        mean = adapter.encode_concepts(["walking"], "mean")
    with torch.no_grad():
        rows = pipe._get_t5_prompt_embeds(prompt=["walking"], max_sequence_length=16)[0]
    assert mean.pieces == [["walk", "##ing"]]
    torch.testing.assert_close(mean.embeddings[0], rows[:2].mean(dim=0))
    with pytest.warns(UserWarning):
        first = adapter.encode_concepts(["walking"], "first")
    assert torch.equal(first.embeddings[0], rows[0])


def test_fused_projections_stay_bit_identical():
    pipe = vidinterp.testing.tiny_pipeline("flux")
    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        concept_outputs = []
        graph.module("blocks.0.attn.hook_concept_z").register_forward_hook(
            lambda module, args, output: concept_outputs.append(output))
        _run(pipe)
    pipe.transformer.fuse_qkv_projections()
    reference = _run(pipe)
    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        graph.module("blocks.0.attn.hook_concept_z").register_forward_hook(
            lambda module, args, output: concept_outputs.append(output))
        traced = _run(pipe)
    assert torch.equal(traced, reference)
    torch.testing.assert_close(concept_outputs[1], concept_outputs[0])


def test_head_ablation_through_torch_hook_and_nnsight_agree():
    """Hook tensors are transposed views of the stock ``[B, S, H, d]`` tensors: a returned
    replacement and an in-place nnsight edit must both reach the model."""
    from nnsight import NNsight

    pipe = vidinterp.testing.tiny_pipeline("flux", variant="schnell")
    inputs = _inputs(pipe)
    site = f"blocks.{len(pipe.transformer.transformer_blocks)}.attn.hook_z"  # first single-stream site
    with torch.no_grad():
        stock = pipe.transformer(**inputs)[0]
        with vidinterp.hooked(pipe) as graph:
            def ablate(module, args, output):
                output = output.clone()
                output[:, 1] = 0
                return output

            handle = graph.module(site).register_forward_hook(ablate)
            ablated = pipe.transformer(**inputs)[0]
            handle.remove()
            model = NNsight(pipe.transformer)
            with model.trace(**inputs):
                graph.envoy(model, site).output[:, 1] = 0
                edited = model.output.save()
        restored = pipe.transformer(**inputs)[0]
    assert not torch.equal(stock, ablated)
    assert torch.equal(ablated, edited[0])
    assert torch.equal(stock, restored)
