"""LTX-Video specifics beyond the conformance suite: prompt-word concepts against a hand-computed
oracle, the prompt mask of cross-attention in the layout and in the attention itself, geometry
and the resolution-dependent schedule, latent normalisation, and image-to-video renoising."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vidinterp
import vidinterp.testing
from vidinterp.concept_stream import concept_state
from vidinterp.context import TraceContext
from vidinterp.install import installed
from vidinterp.registry import adapter_for
from vidinterp.runtime import Runtime
from vidinterp.testing.recorder import VisitRecorder
from vidinterp.video import to_model_pixels

PROMPT = "a red dog walking on green grass"
NEGATIVE = "a blue cat"
GEOMETRY = (9, 32, 64)  # the tiny pipelines' native geometry: 3 latent frames of 4x8 tokens



def _pipe(variant: str = "t2v"):
    return vidinterp.testing.tiny_pipeline("ltx", variant=variant)


def _video(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*GEOMETRY, 3), dtype=np.uint8)


def transformer_inputs(pipe, prompt: str = PROMPT) -> dict:
    """Direct transformer inputs at the native geometry, batch 1, as the pipeline makes them."""
    embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device="cpu")
    return {"hidden_states": torch.randn(1, 3 * 4 * 8, 4, generator=torch.Generator().manual_seed(0)),
            "encoder_hidden_states": embeds, "timestep": torch.tensor([500.0]), "encoder_attention_mask": mask,
            "num_frames": 3, "height": 4, "width": 8, "rope_interpolation_scale": (4 / 25, 8, 8),
            "return_dict": False}


def _prompt_keys_values(pipe, block, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: ``attn2``'s prompt keys (caption projection, to_k, norm_k) and values, ``[B, H, T, d]``."""
    attn, context = block.attn2, pipe.transformer.caption_projection(embeds)
    key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    return key, value


def test_sites_kinds_and_documented_shapes():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    specs = adapter.site_specs()
    assert [(s.name, s.module_path, s.kind, s.heads, s.head_dim) for s in specs[:2]] == [
        ("blocks.0.attn", "transformer_blocks.0.attn1", "self", 2, 16),
        ("blocks.0.cross_attn", "transformer_blocks.0.attn2", "cross", 2, 16)]
    assert len(specs) == 4 and adapter.cfg_batched(3.0) and not adapter.cfg_batched(1.0)
    assert not adapter.has_concept_stream
    sites = vidinterp.list_sites(pipe)
    assert sites["shape"].sel(hook="blocks.1.cross_attn.hook_k").values.tolist() == [1, 2, 128, 16]
    assert sites["shape"].sel(hook="blocks.1.cross_attn.hook_q").values.tolist() == [1, 2, 96, 16]
    assert sites["shape"].sel(hook="blocks.1.attn.hook_k").values.tolist() == [1, 2, 96, 16]


@pytest.mark.parametrize("reduction", ["first", "mean"])
def test_concept_keys_and_values_gather_the_prompt_tokens(reduction):
    """Oracle: attn2's keys and values of the prompt computed by hand, at the concept's T5 tokens."""
    pipe = _pipe()
    adapter = adapter_for(pipe)
    inputs = transformer_inputs(pipe)
    concepts = ["grass", "walking"]
    recorder = VisitRecorder(keep=(("k", "concept"), ("v", "concept"), ("k", "prompt")))
    recorder.bind(TraceContext(concepts=concepts, num_layers=2, num_inference_steps=1))
    with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"):
        state = concept_state(adapter, adapter.encode_concepts(concepts, reduction), PROMPT)
    ids = pipe.tokenizer(PROMPT)["input_ids"]
    grass, walk = (ids.index(pipe.tokenizer.convert_tokens_to_ids(piece)) for piece in ("grass", "walk"))
    assert state.positions == [[grass], [walk, walk + 1]]
    with torch.no_grad():
        with installed(adapter, Runtime([recorder], concepts=state)):
            pipe.transformer(**inputs)
        for layer, block in enumerate(pipe.transformer.transformer_blocks):
            key, value = _prompt_keys_values(pipe, block, inputs["encoder_hidden_states"])
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


def test_concepts_must_be_prompt_words():
    pipe = _pipe()
    with pytest.raises(ValueError, match="'cat' is not a word of the prompt"):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog", "cat"], num_inference_steps=2)
    with pytest.raises(ValueError, match="concept reduction"):
        adapter_for(pipe).encode_concepts(["dog"], "last")


def test_layout_of_a_guided_call_masks_each_branch_padding():
    """With CFG the call stacks the negative prompt's row first: the analysed row is the second,
    and the prompt mask holds each row's real T5 tokens (end token included)."""
    pipe = _pipe()
    recorder = VisitRecorder()
    trace = vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], analyses=[recorder], num_inference_steps=2,
                            steps=[1], guidance_scale=3.0, negative_prompt=NEGATIVE)
    layout = recorder.layouts[(1, "blocks.1.cross_attn")]
    assert (layout.frames, layout.height, layout.width, layout.prompt_tokens) == (3, 4, 8, 128)
    assert layout.batch == 2 and layout.analysed_rows == slice(1, 2)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8)) and layout.pixels_per_token == (8, 8)
    lengths = [len(pipe.tokenizer(text)["input_ids"]) for text in (NEGATIVE, PROMPT)]
    expected = torch.arange(128)[None] < torch.tensor(lengths)[:, None]
    assert torch.equal(layout.prompt_mask, expected)
    assert trace.attrs["analysed_steps"] == [1]


def test_cross_attention_attends_to_the_real_prompt_tokens_only():
    """hook_z at a cross site is the softmax over the unmasked prompt slots only (the model's
    mask, which the layout reports), and differs from attending to every slot."""
    pipe = _pipe()
    inputs = transformer_inputs(pipe)
    captured = {}
    with torch.no_grad(), vidinterp.hooked(pipe) as graph:
        for hook in ("hook_q", "hook_k", "hook_v", "hook_z"):
            graph.module(f"blocks.1.cross_attn.{hook}").register_forward_hook(
                lambda m, a, out, hook=hook: captured.setdefault(hook, out.clone()))
        pipe.transformer(**inputs)
    real = inputs["encoder_attention_mask"][0]
    assert 0 < int(real.sum()) < 128
    scores = captured["hook_q"] @ captured["hook_k"].transpose(-1, -2) / 4.0
    masked = torch.softmax(scores.masked_fill(~real, -torch.inf), dim=-1) @ captured["hook_v"]
    torch.testing.assert_close(captured["hook_z"], masked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(captured["hook_z"], torch.softmax(scores, dim=-1) @ captured["hook_v"], atol=1e-3)


def test_geometry_follows_the_vae_the_patch_and_the_pipeline():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == GEOMETRY
    layout = adapter.layout_for(17, 64, 96)
    assert (layout.frames, layout.height, layout.width) == (5, 8, 12)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8), (9, 12), (13, 16))
    with pytest.raises(ValueError, match=r"num_frames must be 4\*n \+ 1 .*height must be a positive multiple of 32"):
        adapter.check_geometry(10, 48, 64)
    from diffusers import LTXVideoTransformer3DModel

    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_") and k != "native_geometry"}
    pipe.register_modules(transformer=LTXVideoTransformer3DModel(**config))
    assert adapter_for(pipe).default_geometry() == (161, 512, 704)  # the pipeline's own defaults


def test_schedule_shifts_with_the_video_size_as_the_pipeline():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    seen = []
    geometry = (17, 64, 96)
    pipe(prompt=PROMPT, num_inference_steps=3, output_type="latent", guidance_scale=1.0,
         callback_on_step_end=lambda p, i, t, kwargs: seen.append(float(t)) or {},
         **adapter.generation_kwargs(*geometry))
    assert seen == [float(t) for t in adapter.timesteps_for(3, geometry)]
    assert not torch.equal(adapter.timesteps_for(3, geometry), adapter.timesteps_for(3, GEOMETRY))


def test_encode_video_normalises_as_the_pipeline_decodes():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    pixels = to_model_pixels(_video(2))
    with torch.no_grad():
        latents = adapter.encode_video(pixels, torch.Generator().manual_seed(0))
        raw = pipe.vae.encode(pixels.permute(1, 0, 2, 3)[None]).latent_dist.sample(torch.Generator().manual_seed(0))
        decoded = pipe._denormalize_latents(latents, pipe.vae.latents_mean, pipe.vae.latents_std,
                                            pipe.vae.config.scaling_factor)
    assert latents.shape == (1, 4, 3, 4, 8)
    torch.testing.assert_close(decoded, raw)
    assert not torch.allclose(latents, raw)


def test_image_to_video_renoising_conditions_on_the_first_frame():
    """The I2V denoiser feeds the first frame's own normalised VAE latents as latent frame 0,
    with timestep 0 on its tokens, and its step equals the pipeline's from the same latents on
    every frame the pipeline steps."""
    pipe = _pipe("i2v")
    adapter = adapter_for(pipe)
    frames = _video(1)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs),
                                                        with_kwargs=True)
    try:
        with torch.no_grad():
            latents = adapter.encode_video(to_model_pixels(frames), torch.Generator().manual_seed(0))
            current = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
            timesteps = adapter.timesteps(3)
            output = adapter.denoiser(PROMPT, current, 3.0, None)(current, timesteps[0])
            mine = adapter.scheduler_step(output, timesteps[0], current)
    finally:
        handle.remove()
    [call] = calls
    model_input = adapter.latents_from_pipeline(call["hidden_states"][1:], GEOMETRY)
    generator = torch.Generator().manual_seed(0)
    pixels = to_model_pixels(frames).permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        pipe.vae.encode(pixels).latent_dist.sample(generator)  # the video, encoded first
        image = pipe.vae.encode(pixels[:, :, :1]).latent_dist.sample(generator)
    torch.testing.assert_close(model_input[:, :, :1], pipe._normalize_latents(image, pipe.vae.latents_mean,
                                                                              pipe.vae.latents_std))
    assert torch.equal(model_input[:, :, 1:], current[:, :, 1:])
    timestep = call["timestep"]
    assert timestep.shape == (2, 96) and not timestep[:, :32].any() and (timestep[:, 32:] == timesteps[0]).all()

    stepped = []

    def keep(pipeline, index, timestep, tensors):
        stepped.append(tensors["latents"].clone())
        return {}

    pipe(image=Image.fromarray(frames[0]), prompt=PROMPT, latents=pipe._pack_latents(model_input), num_inference_steps=3,
         guidance_scale=3.0, output_type="latent", callback_on_step_end=keep,
         callback_on_step_end_tensor_inputs=["latents"], **adapter.generation_kwargs(*GEOMETRY))
    expected = adapter.latents_from_pipeline(stepped[0], GEOMETRY)
    assert torch.equal(mine[:, :, 1:], expected[:, :, 1:])
    assert torch.equal(expected[:, :, :1], model_input[:, :, :1])  # the pipeline never steps the image


def test_cli_runs_the_default_methods_of_a_cross_attention_family(tmp_path):
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-ltx", "--out", str(tmp_path), "--steps", "4"]) == 0
    # no joint sites: no ConceptAttention
    assert set(vidinterp.Trace.load(tmp_path / "trace.nc").maps.data_vars) == {"imap", "gramcol", "cross_attention"}
