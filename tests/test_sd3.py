"""SD3 adapter: exact stock math (with batched CFG), the concept stream against a brute-force
oracle, the concept's CLIP rows, one-frame geometry, the pipeline's schedule and skip-layer
guidance calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vidinterp
import vidinterp.testing
from vidinterp.install import installed
from vidinterp.registry import adapter_for
from vidinterp.concept_stream import concept_state
from vidinterp.runtime import Runtime

PROMPT = "a red dog walking on green grass"
CONCEPTS = ["dog", "grass"]


@pytest.fixture(scope="module", params=["3", "3.5"])
def pipe(request):
    return vidinterp.testing.tiny_pipeline("sd3", variant=request.param)


def _inputs(pipe, cfg: bool = False, seed: int = 0) -> dict:
    """Keyword arguments of one transformer call as ``StableDiffusion3Pipeline`` makes them."""
    with torch.no_grad():
        prompt, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=PROMPT, prompt_2=None, prompt_3=None, do_classifier_free_guidance=cfg, max_sequence_length=16)
    if cfg:
        prompt, pooled = torch.cat([negative, prompt]), torch.cat([negative_pooled, pooled])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).expand(len(prompt), -1, -1, -1)
    return dict(hidden_states=latents, timestep=torch.full([len(prompt)], 700.0), encoder_hidden_states=prompt,
                pooled_projections=pooled, return_dict=False)


@pytest.mark.parametrize("cfg", [False, True], ids=["no-cfg", "batched-cfg"])
def test_transformer_output_bit_identical_with_concepts_and_every_hook(pipe, cfg):
    adapter = adapter_for(pipe)
    inputs = _inputs(pipe, cfg)
    with torch.no_grad():
        reference = pipe.transformer(**inputs)[0]
    runtime = Runtime(concepts=concept_state(adapter, adapter.encode_concepts(CONCEPTS, "first"), PROMPT))
    runtime.cfg_batched = cfg
    fired: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, output):
            fired.setdefault(name, tuple(output.shape))
        return hook

    with installed(adapter, runtime) as graph:
        for name in graph.hook_names():
            graph.module(name).register_forward_hook(record(name))
        with torch.no_grad():
            traced = pipe.transformer(**inputs)[0]
    assert torch.equal(traced, reference)
    assert set(fired) == set(graph.hook_names())
    batch = 2 if cfg else 1
    assert fired["blocks.0.attn.hook_q"] == (batch, 2, 16 + 32, 16)  # visual + CLIP + T5 rows
    assert fired["blocks.1.attn.hook_concept_z"] == (1, 2, len(CONCEPTS), 16)  # conditional rows only


class MaskedJointProcessor:
    """``JointAttnProcessor2_0``'s math with an attention mask; records per-head outputs."""

    def __init__(self, mask: torch.Tensor, record: list) -> None:
        self.mask, self.record = mask, record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        batch, visual = hidden_states.shape[:2]
        heads = attn.heads

        def split(tensor):
            return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)

        query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        context = [split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states)),
                   split(attn.add_v_proj(encoder_hidden_states))]
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
            context[0], context[1] = attn.norm_added_q(context[0]), attn.norm_added_k(context[1])
        query, key, value = (torch.cat([a, b], dim=2) for a, b in zip((query, key, value), context))
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=self.mask)
        self.record.append(output)
        output = output.transpose(1, 2).flatten(2)
        hidden_states, encoder_hidden_states = output[:, :visual], output[:, visual:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return attn.to_out[1](attn.to_out[0](hidden_states)), encoder_hidden_states


def test_concept_stream_matches_masked_brute_force(pipe):
    """Oracle: concepts appended to the prompt stream of the stock blocks, with an attention mask
    so that nothing attends to them and they attend only to concepts and visual tokens."""
    adapter = adapter_for(pipe)
    inputs = _inputs(pipe)
    embeddings = adapter.encode_concepts(CONCEPTS, "first").embeddings
    visual, text, concepts = 16, inputs["encoder_hidden_states"].shape[1], len(CONCEPTS)
    total = visual + text + concepts
    is_concept = torch.arange(total) >= visual + text
    is_prompt = (torch.arange(total) >= visual) & ~is_concept
    allowed = ~is_concept[None, :].expand(total, total).clone()
    allowed[is_concept] = ~is_prompt
    oracle = dict(inputs, encoder_hidden_states=torch.cat([inputs["encoder_hidden_states"], embeddings[None]], dim=1))

    blocks = pipe.transformer.transformer_blocks
    outputs, expected_outputs, hidden, expected_hidden = [], [], [], []
    originals = [block.attn.processor for block in blocks]
    handles = [block.register_forward_hook(lambda module, args, output: expected_hidden.append(output[0]))
               for block in blocks]
    try:
        for block in blocks:
            block.attn.set_processor(MaskedJointProcessor(allowed, expected_outputs))
        with torch.no_grad():
            pipe.transformer(**oracle)
    finally:
        for block, original in zip(blocks, originals):
            block.attn.set_processor(original)
        for handle in handles:
            handle.remove()

    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        stream = graph["blocks.0.attn"].observer.concepts
        handles = [block.register_forward_hook(lambda module, args, output: hidden.append(stream.hidden))
                   for block in blocks]
        for index in range(len(blocks)):
            graph.module(f"blocks.{index}.attn.hook_concept_z").register_forward_hook(
                lambda module, args, output: outputs.append(output))
        try:
            with torch.no_grad():
                pipe.transformer(**inputs)
        finally:
            for handle in handles:
                handle.remove()

    assert len(outputs) == len(expected_outputs) == len(blocks)
    for got, want in zip(outputs, expected_outputs):
        torch.testing.assert_close(got, want[:, :, visual + text:], atol=1e-5, rtol=1e-5)
    assert blocks[-1].context_pre_only and expected_hidden[-1] is None  # the prompt stream ends there
    for got, want in zip(hidden[:-1], expected_hidden[:-1]):
        torch.testing.assert_close(got, want[:, text:], atol=1e-5, rtol=1e-5)


def test_concept_rows_are_the_prompt_paths_clip_rows(pipe):
    adapter = adapter_for(pipe)
    with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"):
        tokens = adapter.encode_concepts(["dog", "walking"], "first")
    for index, word in enumerate(["dog", "walk"]):
        with torch.no_grad():
            prompt = pipe.encode_prompt(prompt=word, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                        max_sequence_length=16)[0]
        assert torch.equal(tokens.embeddings[index], prompt[0, 1])  # the row after CLIP's BOS
    assert tokens.pieces == [["dog"], ["walk", "##ing"]]
    assert adapter.prompt_tokens == 16 + 16


def test_geometry_is_one_frame(pipe):
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == (1, 16, 16)
    with pytest.raises(ValueError, match=r"num_frames must be 1 .*got 3"):
        adapter.check_geometry(3, 16, 16)
    with pytest.raises(ValueError, match=r"width must be at most 64 pixels \(16 tokens\), got 68"):
        adapter.check_geometry(1, 16, 68)
    layout = adapter.layout_for(1, 16, 24)
    assert (layout.frames, layout.height, layout.width) == (1, 4, 6)
    assert layout.visual == slice(0, 24) and layout.prompt == slice(24, 56)
    assert layout.frame_spans == ((0, 0),) and layout.pixels_per_token == (4, 4)


def test_timesteps_and_renoising_follow_the_pipeline(pipe):
    adapter = adapter_for(pipe)
    seen = {}

    def record(pipeline, index, timestep, callback_kwargs):
        seen.setdefault("timesteps", pipeline.scheduler.timesteps.clone())
        return {}

    pipe(prompt=PROMPT, height=16, width=24, num_inference_steps=4, output_type="latent", guidance_scale=1.0,
         callback_on_step_end=record, max_sequence_length=16)
    assert torch.equal(adapter.timesteps_for(4, (1, 16, 24)), seen["timesteps"])

    image = torch.rand(1, 3, 16, 24) * 2 - 1
    latents = adapter.encode_video(image, torch.Generator().manual_seed(0))
    raw = pipe.vae.encode(image).latent_dist.sample(torch.Generator().manual_seed(0))
    assert torch.equal(latents, (raw - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor)
    denoise = adapter.denoiser(PROMPT, latents, 2.0, "blurry")
    with torch.no_grad():
        output = denoise(latents, seen["timesteps"][2])
    assert output.shape == latents.shape and torch.isfinite(output).all()


def test_skip_layer_guidance_call_is_not_analysed(pipe):
    calls = {"hook_q": 0, "hook_concept_q": 0}
    with vidinterp.hooked(pipe, CONCEPTS, prompt=PROMPT) as graph:
        for hook in calls:
            graph.module(f"blocks.1.attn.{hook}").register_forward_hook(
                lambda module, args, output, hook=hook: calls.__setitem__(hook, calls[hook] + 1))
        pipe(prompt=PROMPT, height=16, width=16, num_inference_steps=3, output_type="latent", guidance_scale=2.0,
             skip_guidance_layers=[0], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0,
             max_sequence_length=16)
    assert calls == {"hook_q": 3 + 2, "hook_concept_q": 3}  # skip-layer calls at steps 1 and 2
