"""SkyReels-V2 specifics beyond the conformance suite (the adapter is Wan's with a few declarations):
the adapter is chosen for the SkyReels-V2 transformer, prompt-word concepts against a hand-computed
oracle on the prompt the pipeline actually encodes (after its cleaning), the image-to-video cross
branch, the diffusion-forcing pipelines and calls refused, geometry from the pipeline's own
defaults, and image-to-video renoising, which the conformance suite cannot check."""

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
GEOMETRY = (9, 32, 48)  # the tiny pipelines' native geometry: 3 latent frames of 2x3 tokens


def _pipe(variant: str = "t2v", **overrides):
    return vidinterp.testing.tiny_pipeline("skyreels_v2", variant=variant, **overrides)


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*GEOMETRY, 3), dtype=np.uint8)


def transformer_inputs(pipe, prompt: str = PROMPT) -> dict:
    """Direct transformer inputs at the tiny native geometry (3 latent frames of 4x6), batch 1."""
    config = pipe.transformer.config
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)
    inputs = {"hidden_states": torch.randn(1, config.in_channels, 3, 4, 6, generator=generator),
              "timestep": torch.tensor([500.0]), "encoder_hidden_states": embeds, "return_dict": False}
    if config.image_dim is not None:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, config.image_dim, generator=generator)
    return inputs


def test_the_skyreels_transformer_gets_its_own_adapter_with_wan_sites():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    assert type(adapter).__name__ == "SkyReelsV2Adapter" and adapter.family == "skyreels_v2"
    assert type(pipe.transformer).__name__ == "SkyReelsV2Transformer3DModel"
    specs = adapter.site_specs()
    assert [(s.name, s.module_path, s.kind, s.attentions) for s in specs[:2]] == [
        ("blocks.0.attn", "blocks.0.attn1", "self", ("main",)),
        ("blocks.0.cross_attn", "blocks.0.attn2", "cross", ("main",))]
    assert not adapter.cfg_batched(5.0) and not adapter.has_concept_stream
    sites = vidinterp.list_sites(pipe)
    assert sites["shape"].sel(hook="blocks.1.cross_attn.hook_k").values.tolist() == [1, 2, 512, 16]
    assert sites["shape"].sel(hook="blocks.1.cross_attn.hook_q").values.tolist() == [1, 2, 18, 16]
    i2v = adapter_for(_pipe("i2v")).site_specs()
    assert [s.attentions for s in i2v[:2]] == [("main",), ("image", "main")]


@pytest.mark.parametrize("reduction", ["first", "mean"])
def test_concept_keys_and_values_gather_the_cleaned_prompt_tokens(reduction):
    """Oracle: attn2's prompt keys/values computed by hand from the text embedder, at the tokens
    the pipeline's own encoder receives for the concept, with a prompt its cleaning changes
    (double-escaped HTML and runs of spaces)."""
    pipe = _pipe()
    adapter = adapter_for(pipe)
    raw = "a red dog &amp;amp;   walking on green grass"
    received = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda module, args: received.append(args[0][0].tolist()))
    inputs = transformer_inputs(pipe, raw)
    handle.remove()
    concepts = ["grass", "walking"]
    recorder = VisitRecorder(keep=(("k", "concept"), ("v", "concept"), ("k", "prompt")))
    recorder.bind(TraceContext(concepts=concepts, num_layers=2, num_inference_steps=1))
    with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"):
        state = concept_state(adapter, adapter.encode_concepts(concepts, reduction), raw)
    [ids] = received
    grass, walk = (ids.index(pipe.tokenizer.convert_tokens_to_ids(piece)) for piece in ("grass", "walk"))
    assert state.positions == [[grass], [walk, walk + 1]]
    with torch.no_grad():
        with installed(adapter, Runtime([recorder], concepts=state)):
            pipe.transformer(**inputs)
        context = pipe.transformer.condition_embedder.text_embedder(inputs["encoder_hidden_states"])
        for layer, block in enumerate(pipe.transformer.blocks):
            attn = block.attn2
            key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            site = f"blocks.{layer}.cross_attn"
            assert torch.equal(recorder.one(0, site, "k", "prompt"), key)
            for letter, tensor in (("k", key), ("v", value)):
                concept = recorder.one(0, site, letter, "concept")
                assert torch.equal(concept[:, :, 0], tensor[:, :, grass])
                expected = tensor[:, :, walk] if reduction == "first" else tensor[:, :, walk:walk + 2].mean(dim=2)
                torch.testing.assert_close(concept[:, :, 1], expected, rtol=0, atol=0 if reduction == "first" else 1e-6)


def test_image_to_video_cross_site_attends_to_prompt_and_image_separately():
    """hook_z is softmax(q k^T / sqrt(d)) v over the 512 prompt slots, hook_image_z the same over
    the CLIP image context (captured at the SkyReels-V2 processor's own dispatch calls)."""
    pipe = _pipe("i2v")
    inputs = transformer_inputs(pipe)
    captured = {}
    with torch.no_grad():
        stock = pipe.transformer(**inputs)[0]
        with vidinterp.hooked(pipe) as graph:
            processor = graph["blocks.1.cross_attn"]
            for hook in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_image_k", "hook_image_v", "hook_image_z"):
                getattr(processor, hook).register_forward_hook(
                    lambda m, a, out, hook=hook: captured.setdefault(hook, out.clone()))
            traced = pipe.transformer(**inputs)[0]
    assert torch.equal(stock, traced)
    assert captured["hook_k"].shape == (1, 2, 512, 16) and captured["hook_image_k"].shape == (1, 2, 5, 16)
    for keys, values, output in (("hook_k", "hook_v", "hook_z"), ("hook_image_k", "hook_image_v", "hook_image_z")):
        scores = captured["hook_q"] @ captured[keys].transpose(-1, -2) / 4.0
        torch.testing.assert_close(captured[output], torch.softmax(scores, dim=-1) @ captured[values],
                                   rtol=1e-4, atol=1e-5)


def test_diffusion_forcing_is_refused_by_name():
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = _pipe()
    forcing = SkyReelsV2DiffusionForcingPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                                                 transformer=pipe.transformer, vae=pipe.vae, scheduler=pipe.scheduler)
    with pytest.raises(NotImplementedError, match="SkyReelsV2DiffusionForcingPipeline is not supported.*"
                                                  "SkyReelsV2Pipeline and SkyReelsV2ImageToVideoPipeline"):
        adapter_for(forcing)
    inputs = transformer_inputs(pipe)
    for change in ({"enable_diffusion_forcing": True, "timestep": torch.full((1, 3), 500.0)},
                   {"timestep": torch.full((1, 3), 500.0)}):
        with torch.no_grad(), vidinterp.hooked(pipe):
            with pytest.raises(NotImplementedError, match="per-frame timesteps"):
                pipe.transformer(**{**inputs, **change})
    pipe.transformer.register_to_config(num_frame_per_block=3)
    with torch.no_grad(), vidinterp.hooked(pipe):
        with pytest.raises(NotImplementedError, match="num_frame_per_block=3 .block-causal"):
            pipe.transformer(**inputs)


def test_geometry_follows_the_vae_and_the_skyreels_pipeline_defaults():
    pipe = _pipe()
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == GEOMETRY
    assert (adapter.temporal_compression, adapter.spatial_compression) == (4, 8)  # from vae.temperal_downsample
    layout = adapter.layout_for(17, 32, 64)
    assert (layout.frames, layout.height, layout.width, layout.prompt_tokens) == (5, 2, 4, 512)
    assert layout.frame_spans == ((0, 0), (1, 4), (5, 8), (9, 12), (13, 16))
    with pytest.raises(ValueError, match=r"SkyReels-V2.*num_frames must be 4\*n \+ 1"):
        adapter.check_geometry(10, 32, 48)
    from diffusers import SkyReelsV2Transformer3DModel

    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_") and k != "native_geometry"}
    pipe.register_modules(transformer=SkyReelsV2Transformer3DModel(**config))
    assert adapter_for(pipe).default_geometry() == (97, 544, 960)  # SkyReelsV2Pipeline's defaults, not Wan's


def test_image_to_video_denoiser_reproduces_the_pipeline_step():
    """One step of the renoising denoiser with CFG, conditioned on the video's first frame (mask,
    first-frame VAE latents and CLIP embeddings built by the pipeline's own helpers), equals the
    SkyReels-V2 I2V pipeline's first step from the same latents (the conformance step check
    does not apply to image-to-video)."""
    pipe = _pipe("i2v")
    adapter = adapter_for(pipe)
    frames = _frames(1)
    with torch.no_grad():
        latents = adapter.encode_video(to_model_pixels(frames), torch.Generator().manual_seed(0))
        timesteps = adapter.timesteps(3)
        output = adapter.denoiser(PROMPT, latents, 5.0, None)(latents, timesteps[0])
        mine = adapter.scheduler_step(output, timesteps[0], latents)
    captured = {}

    def keep_first(pipeline, index, timestep, tensors):
        captured.setdefault(index, tensors["latents"].clone())
        return {}

    pipe(image=Image.fromarray(frames[0]), prompt=PROMPT, latents=latents.clone(), num_inference_steps=3,
         guidance_scale=5.0, output_type="latent", callback_on_step_end=keep_first,
         callback_on_step_end_tensor_inputs=["latents"], **adapter.generation_kwargs(*GEOMETRY))
    assert torch.equal(mine, captured[0])


def test_cli_runs_tiny_skyreels_v2(tmp_path):
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-skyreels_v2", "--out", str(tmp_path), "--steps", "4"]) == 0
    assert set(vidinterp.Trace.load(tmp_path / "trace.nc").maps.data_vars) == {"imap", "gramcol", "cross_attention"}
