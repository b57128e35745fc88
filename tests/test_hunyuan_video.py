"""HunyuanVideo adapter: exactness against the stock model, the concept stream against a
brute-force oracle, prompt padding, single-stream sites, guidance and renoising paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.registry import adapter_for

PROMPTS = ["a red dog walking on green grass", "a cat"]
CONCEPTS = ["dog", "grass"]


@pytest.fixture
def pipe():
    pipe = vidinterp.testing.tiny_pipeline("hunyuan_video")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call_inputs(pipe, prompts: list[str], latent_frames: int = 3, timestep: float = 700.0) -> dict:
    """Transformer keyword arguments as the pipeline builds them, one row per prompt (prompts of
    different lengths: rows with different padding)."""
    adapter = adapter_for(pipe)
    embeds, pooled, mask = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=adapter.max_text_length)
    batch = len(prompts)
    latents = torch.randn(batch, 4, latent_frames, 8, 12, generator=torch.Generator().manual_seed(1))
    return dict(
        hidden_states=latents,
        timestep=torch.full((batch,), timestep),
        encoder_hidden_states=embeds,
        encoder_attention_mask=mask,
        pooled_projections=pooled,
        guidance=torch.full((batch,), 6000.0),
        return_dict=False,
    )


def _record_every_hook(graph, fired: list[str]) -> None:
    for name in graph.hook_names():
        def hook(module, args, output, name=name):
            fired.append(name)
        graph.module(name).register_forward_hook(hook)


@pytest.mark.parametrize("overrides", [{}, {"patch_size_t": 2}], ids=["default", "patch_t2"])
def test_transformer_bit_identical_with_concepts_and_every_hook(overrides):
    """Stock processors vs site processors with the concept stream and every hook point hooked:
    torch.equal, on a batch whose rows have different prompt padding."""
    pipe = vidinterp.testing.tiny_pipeline("hunyuan_video", **overrides)
    inputs = _call_inputs(pipe, PROMPTS, latent_frames=4 if overrides else 3)
    with torch.no_grad():
        reference = pipe.transformer(**inputs)[0]
        fired: list[str] = []
        with vidinterp.hooked(pipe, concepts=CONCEPTS, prompt=PROMPTS[0]) as graph:
            _record_every_hook(graph, fired)
            traced = pipe.transformer(**inputs)[0]
            names = graph.hook_names()
        restored = pipe.transformer(**inputs)[0]
    assert torch.equal(traced, reference)
    assert torch.equal(restored, reference)
    assert set(fired) == set(names)


def test_sites_double_then_single_stream(pipe):
    """Double-stream blocks, then single-stream blocks, as ``blocks.{l}.attn`` in execution
    order; only double-stream sites carry concept hooks."""
    adapter = adapter_for(pipe)
    transformer = pipe.transformer
    double, single = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
    specs = adapter.site_specs()
    assert [spec.name for spec in specs] == [f"blocks.{layer}.attn" for layer in range(double + single)]
    assert [spec.module_path for spec in specs] == (
        [f"transformer_blocks.{i}.attn" for i in range(double)]
        + [f"single_transformer_blocks.{j}.attn" for j in range(single)]
    )
    assert [spec.concept_stream for spec in specs] == [True] * double + [False] * single

    inputs = _call_inputs(pipe, PROMPTS[:1])
    order: list[str] = []
    shapes: dict[str, tuple] = {}
    with torch.no_grad(), vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
        for name in graph.hook_names():
            def hook(module, args, output, name=name):
                order.append(name.rsplit(".", 1)[0])
                shapes[name] = tuple(output.shape)
            graph.module(name).register_forward_hook(hook)
        pipe.transformer(**inputs)
    assert list(dict.fromkeys(order)) == [spec.name for spec in specs]
    visual, text = 3 * 4 * 6, adapter.max_text_length
    for layer, spec in enumerate(specs):
        assert shapes[f"{spec.name}.hook_q"] == (1, spec.heads, visual + text, spec.head_dim)
        assert shapes[f"{spec.name}.hook_z"] == (1, spec.heads, visual + text, spec.head_dim)
        has_concepts = f"{spec.name}.hook_concept_z" in shapes
        assert has_concepts == (layer < double)
        if has_concepts:
            assert shapes[f"{spec.name}.hook_concept_q"] == (1, spec.heads, len(CONCEPTS), spec.head_dim)
    with pytest.raises(KeyError, match="no hook point 'hook_concept_q'"):
        with vidinterp.hooked(pipe) as graph:
            graph.module(f"blocks.{double}.attn.hook_concept_q")


def _oracle_concept_stream(pipe, inputs: dict, concepts: list[str]):
    """Brute force with the stock processors: append the refined concept tokens to the prompt
    stream and run the double-stream blocks with a mask in which nothing attends to concepts
    and concepts attend to visual tokens and concepts only.

    Returns per double block the concept hidden states after the block ``[B, C, D]`` and the
    concepts' per-head attention outputs ``[B, H, C, d]`` (the input of ``to_add_out``)."""
    transformer = pipe.transformer
    batch = inputs["hidden_states"].shape[0]
    timestep, prompt_mask = inputs["timestep"], inputs["encoder_attention_mask"]
    temb, _ = transformer.time_text_embed(timestep, inputs["pooled_projections"], inputs["guidance"])
    rotary = transformer.rope(inputs["hidden_states"])
    visual = transformer.x_embedder(inputs["hidden_states"])
    prompt = transformer.context_embedder(inputs["encoder_hidden_states"], timestep, prompt_mask)
    concept_rows = []
    for concept in concepts:  # each concept encoded as a prompt; its token is the first after the crop
        embeds, _, mask = pipe.encode_prompt(concept, device="cpu", max_sequence_length=prompt.shape[1])
        concept_rows.append(transformer.context_embedder(embeds, timestep[:1], mask)[0, 0])
    concept_tokens = torch.stack(concept_rows).expand(batch, -1, -1)
    text = torch.cat([prompt, concept_tokens], dim=1)

    visual_count, prompt_count, count = visual.shape[1], prompt.shape[1], len(concepts)
    total = visual_count + prompt_count + count
    keys = torch.arange(total)
    is_visual, is_concept = keys < visual_count, keys >= visual_count + prompt_count
    real_prompt = (keys[None] >= visual_count) & (keys[None] < visual_count + prompt_mask.sum(1, keepdim=True))
    mask = torch.zeros(batch, 1, total, total, dtype=torch.bool)
    mask[:, 0, :visual_count + prompt_count] = (is_visual[None] | real_prompt)[:, None]
    mask[:, 0, visual_count + prompt_count:] = (is_visual | is_concept)[None, None]

    hidden_after, outputs_c = [], []
    for block in transformer.transformer_blocks:
        captured = {}

        def capture(module, args, output):
            captured["z"] = args[0][:, -count:]

        handle = block.attn.to_add_out.register_forward_hook(capture)
        visual, text = block(visual, text, temb, mask, rotary)
        handle.remove()
        heads = block.attn.heads
        outputs_c.append(captured["z"].unflatten(2, (heads, -1)).transpose(1, 2))
        hidden_after.append(text[:, -count:])
    return hidden_after, outputs_c


def test_concept_stream_matches_brute_force_oracle(pipe):
    inputs = _call_inputs(pipe, PROMPTS)
    double = len(pipe.transformer.transformer_blocks)
    hidden, outputs_c = [], []
    with torch.no_grad():
        expected_hidden, expected_outputs = _oracle_concept_stream(pipe, inputs, CONCEPTS)
        with vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
            stream = graph["blocks.0.attn"].observer.concepts
            for layer, block in enumerate(pipe.transformer.transformer_blocks):
                block.register_forward_hook(lambda module, args, output: hidden.append(stream.hidden.clone()))
                graph.module(f"blocks.{layer}.attn.hook_concept_z").register_forward_hook(
                    lambda module, args, output: outputs_c.append(output.clone()))
            pipe.transformer(**inputs)
    assert len(hidden) == len(outputs_c) == double
    for layer in range(double):
        torch.testing.assert_close(outputs_c[layer], expected_outputs[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[layer], expected_hidden[layer], atol=1e-5, rtol=1e-5)


def test_concept_stream_restarts_every_call(pipe):
    """Two identical calls give identical concept outputs (no state leaks across calls)."""
    inputs = _call_inputs(pipe, PROMPTS[:1])
    outputs: list[torch.Tensor] = []
    with torch.no_grad(), vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
        graph.module("blocks.1.attn.hook_concept_z").register_forward_hook(
            lambda module, args, output: outputs.append(output.clone()))
        pipe.transformer(**inputs)
        pipe.transformer(**inputs)
    assert len(outputs) == 2 and torch.equal(outputs[0], outputs[1])


def test_prompt_padding_mask(pipe):
    """The layout's prompt mask is the tokenizer's (cropped) mask; padded prompt slots are never
    attended: their content changes no visual output, unlike a real prompt token's."""
    inputs = _call_inputs(pipe, PROMPTS)
    real = inputs["encoder_attention_mask"].bool()
    assert real[0].sum() > real[1].sum() and not real[1].all()
    layouts, visual_z = [], []
    with torch.no_grad(), vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
        runtime = graph["blocks.0.attn"].observer

        def record(module, args, output):
            layouts.append(runtime.layout)
            visual_z.append(output[:, :, runtime.layout.visual].clone())

        graph.module("blocks.2.attn.hook_z").register_forward_hook(record)
        reference = pipe.transformer(**inputs)[0]
        padded = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        padded["encoder_hidden_states"][~real] = 100.0
        padded_output = pipe.transformer(**padded)[0]
        changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        changed["encoder_hidden_states"][1, 0] += 1.0
        changed_output = pipe.transformer(**changed)[0]
    layout = layouts[0]
    assert torch.equal(layout.prompt_mask, real)
    assert layout.visual == slice(0, 72) and layout.prompt == slice(72, 72 + real.shape[1])
    torch.testing.assert_close(padded_output, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(visual_z[1], visual_z[0], atol=1e-6, rtol=0)
    assert not torch.allclose(changed_output[1], reference[1], atol=1e-4)
    torch.testing.assert_close(changed_output[0], reference[0], atol=1e-6, rtol=0)


def test_concepts_encoded_through_prompt_template(pipe):
    """Concepts sit right after the template crop; multi-token concepts warn, and ``mean``
    differs from ``first``."""
    adapter = adapter_for(pipe)
    template = adapter.prompt_template
    prefix = template["template"].split("{}")[0]
    assert len(pipe.tokenizer(prefix)["input_ids"]) == template["crop_start"]
    single = adapter.encode_concepts(["dog"], "first")
    assert single.pieces == [["dog"]] and single.extras["positions"] == [[0]]
    with pytest.warns(UserWarning, match=r"'walking' splits into 2 tokens"):
        first = adapter.encode_concepts(["walking", "dog"], "first")
    with pytest.warns(UserWarning, match="mean of its sub-tokens"):
        mean = adapter.encode_concepts(["walking", "dog"], "mean")
    assert first.pieces[0] == ["walk", "##ing"] and first.extras["positions"][0] == [0, 1]
    assert first.embeddings.shape == (2, pipe.text_encoder.config.hidden_size)
    assert not torch.allclose(first.embeddings[0], mean.embeddings[0])
    torch.testing.assert_close(first.embeddings[1], mean.embeddings[1])


def test_true_cfg_call_is_not_analysed(pipe):
    """The pipeline's true-CFG negative call (``cache_context("uncond")``) is marked
    unconditional: the concept stream runs once per step, the video stays bit-identical."""
    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    extra = {"true_cfg_scale": 3.0}
    reference = pipe(prompt=PROMPTS[0], negative_prompt="blurry", num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(0), **adapter.generation_kwargs(frames, height, width),
                     **extra).frames[0]
    calls = {"q": 0, "concept": 0}

    def count(kind):
        def hook(module, args, output):
            calls[kind] += 1
        return hook

    hooks = {"blocks.0.attn.hook_q": count("q"), "blocks.0.attn.hook_concept_z": count("concept")}
    trace = vidinterp.trace(pipe, prompt=PROMPTS[0], negative_prompt="blurry", concepts=CONCEPTS,
                            num_inference_steps=2, steps=[0, 1], pipeline_kwargs=extra, hooks=hooks)
    assert calls == {"q": 4, "concept": 2}
    assert trace.attrs["analysed_steps"] == [0, 1]
    assert np.array_equal(trace.video, np.round(np.clip(reference, 0, 1) * 255).astype(np.uint8))
    assert adapter.cfg_batched(6.0) is False and adapter.cfg_batched(1.0) is False


def test_geometry_checks_and_layout():
    adapter = adapter_for(vidinterp.testing.tiny_pipeline("hunyuan_video"))
    assert adapter.default_geometry() == (9, 32, 48)
    layout = adapter.layout_for(9, 32, 48)
    assert (layout.frames, layout.height, layout.width) == (3, 4, 6)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8))
    assert layout.pixels_per_token == (8, 8)
    assert layout.visual == slice(0, 72) and layout.prompt == slice(72, 72 + adapter.max_text_length)
    with pytest.raises(ValueError, match=r"num_frames must be 4\*n \+ 1 \(e\.g\. 9\), got 10"):
        adapter.check_geometry(10, 32, 48)
    # the pipeline requires multiples of 16 although a token cell is 8 pixels
    with pytest.raises(ValueError, match="height must be a positive multiple of 16 pixels, got 40"):
        adapter.check_geometry(9, 40, 48)
    with pytest.raises(ValueError, match="9 frames at 32x48"):
        adapter.check_geometry(9, 32, 50)

    adapter_t2 = adapter_for(vidinterp.testing.tiny_pipeline("hunyuan_video", patch_size_t=2))
    assert adapter_t2.default_geometry() == (13, 32, 48)
    layout = adapter_t2.layout_for(13, 32, 48)
    assert layout.frames == 2 and layout.frame_spans == ((0, 4), (5, 12))
    with pytest.raises(ValueError, match=r"divisible by the temporal patch 2 \(e\.g\. 13\), got 9 -> 3 latent frames"):
        adapter_t2.check_geometry(9, 32, 48)


def test_renoise_path_matches_pipeline(pipe):
    """``timesteps`` is the pipeline's schedule, the denoiser calls the transformer exactly as the
    pipeline does, ``encode_video`` applies the VAE scaling factor, and the reference renoise step
    is 20 of 30."""
    adapter = adapter_for(pipe)
    frames, height, width = adapter.default_geometry()
    calls: list[tuple[dict, torch.Tensor]] = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((kwargs, output[0])), with_kwargs=True)
    pipe(prompt=PROMPTS[0], num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0),
         **adapter.generation_kwargs(frames, height, width))
    handle.remove()
    pipeline_timesteps = pipe.scheduler.timesteps.clone()
    assert torch.equal(adapter.timesteps(3), pipeline_timesteps)

    kwargs, output = calls[1]
    denoise = adapter.denoiser(PROMPTS[0], kwargs["hidden_states"], guidance_scale=6.0, negative_prompt=None)
    with torch.no_grad():
        assert torch.equal(denoise(kwargs["hidden_states"], pipeline_timesteps[1]), output)

    video = torch.rand(frames, 3, height, width) * 2 - 1
    latents = adapter.encode_video(video, torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = pipe.vae.encode(video.permute(1, 0, 2, 3)[None]).latent_dist.sample(torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 3, 8, 12)
    torch.testing.assert_close(latents, raw * pipe.vae.config.scaling_factor)
    assert int(adapter.default_renoise_fraction * 30) == 20


def test_nnsight_reads_sites_and_concept_stream(pipe):
    """nnsight reaches the hook points (its wrappers change the blocks' ``forward`` signature,
    which the block hooks must survive), the output stays exact, and edits act on the model."""
    nnsight = pytest.importorskip("nnsight")
    inputs = _call_inputs(pipe, PROMPTS[:1])
    plain: list[torch.Tensor] = []
    with torch.no_grad():
        reference = pipe.transformer(**inputs)[0]
        with vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
            graph.module("blocks.1.attn.hook_concept_z").register_forward_hook(
                lambda module, args, output: plain.append(output.clone()))
            pipe.transformer(**inputs)
        with vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
            model = nnsight.NNsight(pipe.transformer)
            with model.trace(**inputs):
                concept_z = graph.envoy(model, "blocks.1.attn.hook_concept_z").output.clone().save()
                output = model.output.save()
        with vidinterp.hooked(pipe) as graph:
            model = nnsight.NNsight(pipe.transformer)
            with model.trace(**inputs):
                graph.envoy(model, "blocks.3.attn.hook_z").output[:, 0] = 0
                ablated = model.output.save()
    assert torch.equal(output[0], reference)
    assert torch.equal(concept_z, plain[0])
    assert not torch.equal(ablated[0], reference)
