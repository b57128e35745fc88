"""Wan2.1 specifics: exact reproduction with every hook point active, prompt-word concepts
against a hand-computed oracle, separate CFG calls (only the conditional one analysed), the
image-to-video cross-attention branch, geometry and the renoising path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vidinterp
import vidinterp.testing
from vidinterp.context import TraceContext
from vidinterp.install import installed
from vidinterp.registry import adapter_for
from vidinterp.concept_stream import concept_state
from vidinterp.runtime import Runtime
from vidinterp.testing.recorder import VisitRecorder
from vidinterp.video import to_model_pixels

PROMPT = "a red dog walking on green grass"
PROMPT_WORDS = ["a", "red", "dog", "walking", "on", "green", "grass"]
VARIANTS = ["t2v", "i2v"]
IMAGE_HOOKS = ("hook_image_k", "hook_image_v", "hook_image_z")



def _pipe(variant: str = "t2v", **overrides):
    return vidinterp.testing.tiny_pipeline("wan", variant=variant, **overrides)


def _prompt_embeds(pipe, prompt: str = PROMPT) -> torch.Tensor:
    adapter = adapter_for(pipe)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                       max_sequence_length=adapter.max_text_length)
    return embeds


def transformer_inputs(pipe, seed: int = 0) -> dict:
    """Direct transformer inputs at the tiny native geometry (3 latent frames of 4x6), batch 1."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "hidden_states": torch.randn(1, config.in_channels, 3, 4, 6, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": _prompt_embeds(pipe),
        "return_dict": False,
    }
    if config.image_dim is not None:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, config.image_dim, generator=generator)
    return inputs


def _prompt_keys_values(block, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: ``attn2``'s prompt keys (to_k, norm_k) and values, ``[B, H, T, d]``."""
    attn = block.attn2
    key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    return key, value


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformer_output_bit_identical_with_every_hook_point(variant):
    pipe = _pipe(variant)
    inputs = transformer_inputs(pipe)
    with torch.no_grad():
        stock = pipe.transformer(**inputs)[0]
        fired = []
        with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"), \
                vidinterp.hooked(pipe, concepts=["dog", "walking"], prompt=PROMPT) as graph:
            modules = {name: graph.module(name) for name in graph.hook_names()}
            if variant == "i2v":
                modules.update({f"{site}.{hook}": getattr(graph[site], hook)
                                for site in graph if site.endswith("cross_attn") for hook in IMAGE_HOOKS})
            for name, module in modules.items():
                # returning a clone replaces the tensor: the edit path itself must be exact
                module.register_forward_hook(lambda m, a, out, name=name: fired.append(name) or out.clone())
            traced = pipe.transformer(**inputs)[0]
    assert torch.equal(stock, traced)
    assert set(fired) == set(modules)
    assert not any(isinstance(p, vidinterp.processors.SiteProcessor) for p in pipe.transformer.attn_processors.values())


def test_sites_names_kinds_and_shapes():
    pipe = _pipe(num_layers=3)
    adapter = adapter_for(pipe)
    specs = adapter.site_specs()
    assert [(s.name, s.module_path, s.kind) for s in specs[:2]] == [
        ("blocks.0.attn", "blocks.0.attn1", "self"), ("blocks.0.cross_attn", "blocks.0.attn2", "cross")]
    assert len(specs) == 6 and not adapter.cfg_batched(5.0) and not adapter.has_concept_stream
    sites = vidinterp.list_sites(pipe)
    assert sites["shape"].sel(hook="blocks.2.cross_attn.hook_k").values.tolist() == [1, 2, 512, 16]
    assert sites["shape"].sel(hook="blocks.2.attn.hook_k").values.tolist() == [1, 2, 18, 16]


def test_editing_hook_z_acts_on_the_model_with_torch_hooks_and_nnsight():
    from nnsight import NNsight

    pipe = _pipe()
    inputs = transformer_inputs(pipe)

    def ablate_head_0(module, args, output):
        output = output.clone()
        output[:, 0] = 0
        return output

    with torch.no_grad():
        stock = pipe.transformer(**inputs)[0]
        with vidinterp.hooked(pipe) as graph:
            handle = graph.module("blocks.1.cross_attn.hook_z").register_forward_hook(ablate_head_0)
            ablated = pipe.transformer(**inputs)[0]
            handle.remove()
            model = NNsight(pipe.transformer)
            with model.trace(**inputs):
                graph.envoy(model, "blocks.1.cross_attn.hook_z").output[:, 0] = 0
                edited = model.output.save()
        restored = pipe.transformer(**inputs)[0]
    assert not torch.equal(stock, ablated)
    assert torch.equal(ablated, edited[0])
    assert torch.equal(stock, restored)


def test_image_to_video_cross_attention_adds_the_image_branch():
    """At an I2V cross site, hook_k/v/z are the text attention's (512 prompt tokens) and the image
    context's attention has its own hook points: hook_z = softmax(q k^T) v over the prompt,
    hook_image_z the same over the image context."""
    pipe = _pipe("i2v")
    inputs = transformer_inputs(pipe)
    captured = {}
    with torch.no_grad(), vidinterp.hooked(pipe) as graph:
        processor = graph["blocks.0.cross_attn"]
        for hook in ("hook_q", "hook_k", "hook_v", "hook_z") + IMAGE_HOOKS:
            getattr(processor, hook).register_forward_hook(
                lambda m, a, out, hook=hook: captured.setdefault(hook, out.clone()))
        pipe.transformer(**inputs)
    assert captured["hook_k"].shape == (1, 2, 512, 16)
    assert captured["hook_image_k"].shape == captured["hook_image_v"].shape == (1, 2, 5, 16)
    for keys, values, output in (("hook_k", "hook_v", "hook_z"), ("hook_image_k", "hook_image_v", "hook_image_z")):
        scores = captured["hook_q"] @ captured[keys].transpose(-1, -2) / 4.0
        torch.testing.assert_close(captured[output], torch.softmax(scores, dim=-1) @ captured[values], rtol=1e-4, atol=1e-5)


def test_concept_not_in_prompt_names_the_prompt_words():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    with pytest.raises(ValueError, match="'cat' is not a word of the prompt") as error:
        vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog", "cat"], num_inference_steps=1)
    assert str(PROMPT_WORDS) in str(error.value)
    with pytest.raises(ValueError, match="prompt"):
        with vidinterp.hooked(pipe, concepts=["dog"]):
            pass
    with pytest.raises(ValueError, match="concept reduction"):
        adapter.encode_concepts(["dog"], "last")


def test_concept_positions_follow_the_tokenized_prompt():
    adapter = adapter_for(_pipe())
    with pytest.warns(UserWarning) as caught:
        state = concept_state(adapter, adapter.encode_concepts(["dog", "Walking", "green grass"], "mean"),
                                      "  a red dog   walking on green grass ")
    assert [str(warning.message) for warning in caught] == [
        "concept 'Walking' splits into 2 tokens ['walk', '##ing']; using the mean of its sub-tokens "
        "(concept_reduction='mean')",
        "concept 'green grass' splits into 2 tokens ['green', 'grass']; using the mean of its sub-tokens "
        "(concept_reduction='mean')",
    ]
    assert state.prompt == PROMPT and state.words == PROMPT_WORDS
    assert state.positions == [[2], [3, 4], [6, 7]]
    assert state.pieces == [["dog"], ["walk", "##ing"], ["green", "grass"]]
    torch.testing.assert_close(state.weights[1], torch.tensor([0, 0, 0, 0.5, 0.5, 0, 0, 0]))


@pytest.mark.parametrize("reduction", ["first", "mean"])
def test_concept_keys_and_values_gather_the_prompt_tokens(reduction):
    """Oracle: attn2's keys/values of the prompt computed by hand, at the concept's tokens."""
    pipe = _pipe()
    adapter = adapter_for(pipe)
    inputs = transformer_inputs(pipe)
    concepts = ["grass", "walking"]
    recorder = VisitRecorder(keep=(("k", "concept"), ("v", "concept"), ("k", "prompt")))
    recorder.bind(TraceContext(concepts=concepts, num_layers=2, num_inference_steps=1))
    with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"):
        state = concept_state(adapter, adapter.encode_concepts(concepts, reduction), PROMPT)
    runtime = Runtime([recorder], concepts=state)
    with torch.no_grad():
        with installed(adapter, runtime):
            pipe.transformer(**inputs)
        context = pipe.transformer.condition_embedder.text_embedder(inputs["encoder_hidden_states"])
        ids = pipe.tokenizer(PROMPT)["input_ids"]
        grass = ids.index(pipe.tokenizer.convert_tokens_to_ids("grass"))
        walk = ids.index(pipe.tokenizer.convert_tokens_to_ids("walk"))
        for layer, block in enumerate(pipe.transformer.blocks):
            key, value = _prompt_keys_values(block, context)
            site = f"blocks.{layer}.cross_attn"
            assert torch.equal(recorder.one(0, site, "k", "prompt"), key)
            for letter, tensor in (("k", key), ("v", value)):
                concept = recorder.one(0, site, letter, "concept")
                assert concept.shape == (1, 2, 2, 16)
                assert torch.equal(concept[:, :, 0], tensor[:, :, grass])
                if reduction == "first":
                    assert torch.equal(concept[:, :, 1], tensor[:, :, walk])
                else:
                    torch.testing.assert_close(concept[:, :, 1], tensor[:, :, walk:walk + 2].mean(dim=2))


def test_unconditional_calls_are_neither_analysed_nor_slowed(monkeypatch):
    """CFG runs two transformer calls per step; only the conditional one is visited (once per
    site), it carries the prompt's (not the negative prompt's) keys, and the processors gather
    no concept tensors in the unconditional call."""
    from vidinterp.prompt_words import PromptWords

    pipe = _pipe()
    gathers = []
    original_gather = PromptWords.gather
    monkeypatch.setattr(PromptWords, "gather",
                        lambda self, tensor: gathers.append(1) or original_gather(self, tensor))
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    recorder = VisitRecorder(keep=(("k", "prompt"),))
    try:
        trace = vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], analyses=[recorder], num_inference_steps=3,
                                steps=range(3), guidance_scale=5.0, negative_prompt="a blue cat")
    finally:
        handle.remove()
    sites = [spec.name for spec in adapter_for(pipe).site_specs()]
    assert len(calls) == 6
    assert recorder.visits == [(step, site) for step in range(3) for site in sites]
    assert trace.attrs["analysed_steps"] == [0, 1, 2]
    assert len(gathers) == 3 * 2 * 2  # steps x cross sites x (k, v)
    with torch.no_grad():
        context = pipe.transformer.condition_embedder.text_embedder(_prompt_embeds(pipe))
        key, _ = _prompt_keys_values(pipe.transformer.blocks[0], context)
    assert torch.equal(recorder.one(1, "blocks.0.cross_attn", "k", "prompt"), key)


@pytest.mark.parametrize("variant", VARIANTS)
def test_renoise_with_cfg_visits_each_step_once(variant):
    pipe = _pipe(variant)
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    recorder = VisitRecorder()
    trace = vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=["dog"], analyses=[recorder],
                            num_inference_steps=5, num_renoise_steps=2, guidance_scale=5.0)
    sites = [spec.name for spec in adapter_for(pipe).site_specs()]
    assert trace.attrs["analysed_steps"] == [2, 3]  # reference fraction 0.4: step 2 of 5
    assert recorder.visits == [(step, site) for step in (2, 3) for site in sites]


@pytest.mark.parametrize("variant", VARIANTS)
def test_denoiser_reproduces_the_pipeline_step(variant):
    """One step of the renoising denoiser (with CFG; I2V conditioned on the video's first
    frame) equals the pipeline's first step from the same latents."""
    pipe = _pipe(variant)
    adapter = adapter_for(pipe)
    frames = np.random.default_rng(1).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    with torch.no_grad():
        latents = adapter.encode_video(to_model_pixels(frames), torch.Generator().manual_seed(0))
        timesteps = adapter.timesteps(3)
        output = adapter.denoiser(PROMPT, latents, 5.0, None)(latents, timesteps[0])
        mine = adapter.scheduler_step(output, timesteps[0], latents)
    captured = {}

    def keep_first(pipeline, index, timestep, tensors):
        captured.setdefault(index, tensors["latents"].clone())
        return {}

    extra = {"image": Image.fromarray(frames[0])} if variant == "i2v" else {}
    pipe(prompt=PROMPT, latents=latents.clone(), num_inference_steps=3, guidance_scale=5.0, output_type="latent",
         callback_on_step_end=keep_first, callback_on_step_end_tensor_inputs=["latents"],
         **adapter.generation_kwargs(9, 32, 48), **extra)
    assert torch.equal(mine, captured[0])


def test_encode_video_normalises_as_the_pipeline_decodes():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    pixels = to_model_pixels(np.random.default_rng(2).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8))
    with torch.no_grad():
        latents = adapter.encode_video(pixels, torch.Generator().manual_seed(0))
        raw = pipe.vae.encode(pixels.permute(1, 0, 2, 3)[None]).latent_dist.sample(torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 3, 4, 6)
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(latents / inverse_std + mean, raw)  # the pipeline's decode-side inverse
    assert not torch.allclose(latents, raw)


def test_noise_latents_follow_the_flow_matching_schedule():
    adapter = adapter_for(_pipe())
    timesteps = adapter.timesteps(5)
    clean, noise = torch.randn(1, 4, 3, 4, 6), torch.randn(1, 4, 3, 4, 6)
    sigma = adapter.pipe.scheduler.sigmas[2]
    torch.testing.assert_close(adapter.noise_latents(clean, noise, timesteps[2]), (1 - sigma) * clean + sigma * noise)


def test_geometry_layout_and_frame_spans():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == (9, 32, 48)
    layout = adapter.layout_for(17, 32, 64)
    assert (layout.frames, layout.height, layout.width, layout.prompt_tokens) == (5, 2, 4, 512)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8), (9, 12), (13, 16))
    assert layout.pixels_per_token == (16, 16) and layout.analysed_rows == slice(0, 1)
    with pytest.raises(ValueError, match=r"num_frames must be 4\*n \+ 1 .*width must be a positive multiple of 16"):
        adapter.check_geometry(10, 32, 40)
    with pytest.raises(ValueError, match="at most 512 pixels"):
        adapter.check_geometry(9, 32, 528)
    from diffusers import WanTransformer3DModel

    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_") and k != "native_geometry"}
    pipe.register_modules(transformer=WanTransformer3DModel(**config))
    assert adapter_for(pipe).default_geometry() == (81, 480, 832)  # the pipeline's own defaults
