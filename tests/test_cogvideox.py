"""CogVideoX specifics: exact reproduction, the concept stream against a masked-attention
oracle, and reading/editing sites through torch hooks and nnsight."""

from __future__ import annotations

import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp.registry import adapter_for

VARIANTS = ["2b", "5b", "1.5", "i2v"]
CONCEPTS = ["dog", "grass", "sky"]


def transformer_inputs(pipe, seed: int = 0) -> dict:
    """Direct transformer inputs of the tiny model's native geometry, batch 2 (CFG-like)."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed)
    latent_frames = 4 if config.patch_size_t else 3
    channels = config.in_channels
    inputs = {
        "hidden_states": torch.randn(2, latent_frames, channels, config.sample_height, config.sample_width, generator=generator),
        "encoder_hidden_states": torch.randn(2, config.max_text_seq_length, config.text_embed_dim, generator=generator),
        "timestep": torch.tensor([500, 500]),
    }
    if config.use_rotary_positional_embeddings:
        scale = pipe.vae_scale_factor_spatial
        inputs["image_rotary_emb"] = pipe._prepare_rotary_positional_embeddings(
            config.sample_height * scale, config.sample_width * scale, latent_frames, torch.device("cpu")
        )
    return inputs


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformer_output_bit_identical_with_concepts_and_all_hooks(variant):
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", variant=variant)
    inputs = transformer_inputs(pipe)
    with torch.no_grad():
        stock = pipe.transformer(**inputs).sample
        fired = []
        with vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
            for name in graph.hook_names():
                graph.module(name).register_forward_hook(lambda m, a, o, name=name: fired.append(name))
            traced = pipe.transformer(**inputs).sample
    assert torch.equal(stock, traced)
    assert set(fired) == set(graph.hook_names())


def test_concept_stream_equals_masked_joint_attention():
    """Oracle: append the concepts to the prompt stream of the stock model and mask attention
    so nothing attends to them and they attend to concepts + visual tokens only."""
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", variant="5b", num_layers=3)
    adapter = adapter_for(pipe)
    inputs = transformer_inputs(pipe)
    inputs = {**inputs, "hidden_states": inputs["hidden_states"][:1], "encoder_hidden_states": inputs["encoder_hidden_states"][:1],
              "timestep": inputs["timestep"][:1]}
    concepts = adapter.encode_concepts(CONCEPTS, "first").embeddings  # [C, text_dim]
    text, count = inputs["encoder_hidden_states"].shape[1], len(CONCEPTS)
    visual = inputs["hidden_states"].shape[1] * (pipe.transformer.config.sample_height // 2) * (pipe.transformer.config.sample_width // 2)
    total = text + count + visual
    mask = torch.zeros(1, total, total)
    concept_columns = slice(text, text + count)
    mask[:, :, concept_columns] = float("-inf")
    mask[:, concept_columns, :text] = float("-inf")
    mask[:, concept_columns, concept_columns] = 0.0

    expected_per_block = []
    handles = [
        block.register_forward_hook(lambda m, a, out: expected_per_block.append(out[1][:, text:].clone()))
        for block in pipe.transformer.transformer_blocks
    ]
    with torch.no_grad():
        pipe.transformer(
            **{**inputs, "encoder_hidden_states": torch.cat([inputs["encoder_hidden_states"], concepts[None]], dim=1)},
            attention_kwargs={"attention_mask": mask},
        )
    for handle in handles:
        handle.remove()

    got_per_block = []
    with torch.no_grad(), vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
        state = graph["blocks.0.attn"].observer.concepts
        for block in pipe.transformer.transformer_blocks:
            block.register_forward_hook(lambda m, a, out: got_per_block.append(state.hidden.clone()))
        pipe.transformer(**inputs)
        for block in pipe.transformer.transformer_blocks:
            block._forward_hooks.popitem()
    assert len(got_per_block) == len(expected_per_block) == 3
    for got, expected in zip(got_per_block, expected_per_block):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_concept_stream_restarts_every_call():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    inputs = transformer_inputs(pipe)
    finals = []
    with torch.no_grad(), vidinterp.hooked(pipe, concepts=CONCEPTS) as graph:
        state = graph["blocks.0.attn"].observer.concepts
        for _ in range(2):
            pipe.transformer(**inputs)
            finals.append(state.hidden.clone())
    assert torch.equal(finals[0], finals[1])


def test_read_q_with_torch_hook_and_nnsight_agree():
    from nnsight import NNsight

    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    inputs = transformer_inputs(pipe)
    with torch.no_grad(), vidinterp.hooked(pipe) as graph:
        captured = {}

        def capture(module, args, output):
            captured.setdefault("q", output.clone())

        handle = graph.module("blocks.1.attn.hook_q").register_forward_hook(capture)
        pipe.transformer(**inputs)
        handle.remove()
        model = NNsight(pipe.transformer)
        with model.trace(**inputs):
            query = graph.envoy(model, "blocks.1.attn.hook_q").output.clone().save()
    assert captured["q"].shape == (2, 2, 16 + 3 * 4 * 6, 16)
    assert torch.equal(captured["q"], query)


def test_zeroing_one_head_of_z_changes_output_both_ways():
    from nnsight import NNsight

    pipe = vidinterp.testing.tiny_pipeline("cogvideox")
    inputs = transformer_inputs(pipe)
    with torch.no_grad():
        stock = pipe.transformer(**inputs).sample
        with vidinterp.hooked(pipe) as graph:
            def ablate(module, args, output):
                output = output.clone()
                output[:, 1] = 0
                return output

            handle = graph.module("blocks.0.attn.hook_z").register_forward_hook(ablate)
            ablated = pipe.transformer(**inputs).sample
            handle.remove()
            model = NNsight(pipe.transformer)
            with model.trace(**inputs):
                graph.envoy(model, "blocks.0.attn.hook_z").output[:, 1] = 0
                edited = model.output.save()
        restored = pipe.transformer(**inputs).sample
    assert not torch.equal(stock, ablated)
    assert torch.equal(ablated, edited.sample)
    assert torch.equal(stock, restored)


def test_site_graph_names_and_paths():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", num_layers=3)
    with vidinterp.hooked(pipe) as graph:
        assert list(graph) == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
        assert graph.path("blocks.2.attn.hook_concept_k") == "transformer_blocks.2.attn1.processor.hook_concept_k"
        with pytest.raises(KeyError, match="no site named 'blocks.7.attn'"):
            graph["blocks.7.attn"]
        with pytest.raises(KeyError, match="has no hook point 'hook_x'"):
            graph.module("blocks.0.attn.hook_x")


def test_layout_from_inputs_and_frame_spans():
    pipe = vidinterp.testing.tiny_pipeline("cogvideox", variant="1.5")
    adapter = adapter_for(pipe)
    layout = adapter.layout_for(17, 32, 48)  # 5 latent frames, padded to 6 -> 3 token frames
    assert (layout.frames, layout.height, layout.width) == (3, 4, 6)
    assert layout.frame_spans == ((0, 0), (1, 8), (9, 16))
    layout = adapter_for(vidinterp.testing.tiny_pipeline("cogvideox")).layout_for(13, 32, 16)
    assert (layout.frames, layout.height, layout.width) == (4, 4, 2)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8), (9, 12))
    assert layout.prompt == slice(0, 16) and layout.visual == slice(16, 16 + 32)
