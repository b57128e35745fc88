"""Mochi specifics beyond the conformance suite: the asymmetric joint sites and their token order,
the per-row prompt masks (the stock processor drops each row's padded prompt slots), the concept
stream against a hand computation of Mochi's prompt-stream block, geometry from the pipeline's
hard-coded VAE factors, the inverted linear-quadratic schedule, latent normalisation, and the
rewritten processor's refusal of other processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
NEGATIVE = "a blue cat sleeping in a small white room near a big tree"
GEOMETRY = (13, 32, 48)  # the tiny pipeline's native geometry: 3 latent frames of 2x3 tokens
VISUAL = 3 * 2 * 3
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")  # diffusers' MochiRoPE, float32 on CPU


@pytest.fixture
def pipe():
    return vidinterp.testing.tiny_pipeline("mochi")


def transformer_inputs(pipe, negative: str | None = None) -> dict:
    """Direct transformer inputs at the native geometry: batch 1, or ``[negative, prompt]``."""
    embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
        PROMPT, negative, do_classifier_free_guidance=negative is not None, device="cpu")
    if negative is not None:
        embeds, mask = torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])
    batch = embeds.shape[0]
    return {"hidden_states": torch.randn(batch, 12, 3, 4, 6, generator=torch.Generator().manual_seed(0)),
            "encoder_hidden_states": embeds, "timestep": torch.full((batch,), 300.0), "encoder_attention_mask": mask,
            "return_dict": False}


def test_joint_sites_of_two_streams_of_different_widths(pipe):
    adapter = adapter_for(pipe)
    specs = adapter.site_specs()
    assert [(s.name, s.module_path, s.kind, s.heads, s.head_dim, s.concept_stream) for s in specs] == [
        ("blocks.0.attn", "transformer_blocks.0.attn1", "joint", 2, 16, True),
        ("blocks.1.attn", "transformer_blocks.1.attn1", "joint", 2, 16, True)]
    block = pipe.transformer.transformer_blocks[0]
    assert block.attn1.to_q.in_features == 32 and block.attn1.add_q_proj.in_features == 16  # visual / prompt widths
    assert adapter.token_order == "visual_first" and adapter.cfg_batched(4.5) and adapter.prompt_tokens == 256
    sites = vidinterp.list_sites(pipe, concepts=2)
    assert sites["shape"].sel(hook="blocks.1.attn.hook_k").values.tolist() == [1, 2, VISUAL + 256, 16]
    assert sites["shape"].sel(hook="blocks.1.attn.hook_concept_q").values.tolist() == [1, 2, 2, 16]


def test_bit_identical_with_per_row_masks_concepts_and_every_hook(pipe):
    """A batch whose rows mask different prompt slots, every hook point returning a clone (the
    edit path), the concept stream running: the output is the stock one bit for bit, and the
    stock processors come back."""
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    inputs = transformer_inputs(pipe, NEGATIVE)
    lengths = inputs["encoder_attention_mask"].sum(dim=1).tolist()
    assert lengths[0] != lengths[1]
    with torch.no_grad():
        stock = pipe.transformer(**inputs)[0]
        fired = []
        with vidinterp.hooked(pipe, concepts=["dog", "grass"]) as graph:
            for name in graph.hook_names():
                graph.module(name).register_forward_hook(lambda m, a, out, name=name: fired.append(name) or out.clone())
            traced = pipe.transformer(**inputs)[0]
    assert torch.equal(stock, traced)
    assert {name.rsplit(".", 1)[1] for name in fired} >= {"hook_q", "hook_k", "hook_v", "hook_z", "hook_concept_z"}
    for block in pipe.transformer.transformer_blocks:
        assert type(block.attn1.processor) is MochiAttnProcessor2_0 and "processor" not in block.attn1._modules


def test_hook_z_attends_to_each_rows_unmasked_prompt_slots(pipe):
    """Oracle: each row's visual queries attend to every visual token and to that row's unmasked
    prompt slots only (the mask the layout reports); masked prompt queries give zeros."""
    inputs = transformer_inputs(pipe, NEGATIVE)
    captured = {}
    recorder = VisitRecorder()
    recorder.bind(TraceContext(concepts=[], num_layers=2, num_inference_steps=1))
    runtime = Runtime([recorder])
    with torch.no_grad(), installed(adapter_for(pipe), runtime) as graph:
        for hook in ("hook_q", "hook_k", "hook_v", "hook_z"):
            graph.module(f"blocks.1.attn.{hook}").register_forward_hook(
                lambda m, a, out, hook=hook: captured.setdefault(hook, out.clone()))
        pipe.transformer(**inputs)
    mask = inputs["encoder_attention_mask"]
    assert torch.equal(runtime.layout.prompt_mask, mask.bool())
    q, k, v, z = (captured[name] for name in ("hook_q", "hook_k", "hook_v", "hook_z"))
    keys = torch.cat([torch.ones(2, VISUAL, dtype=torch.bool), mask.bool()], dim=1)  # [B, P + T]
    scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~keys[:, None, None, :], -torch.inf)
    expected = torch.softmax(scores, dim=-1) @ v
    for row, length in enumerate(mask.sum(dim=1).tolist()):
        kept = slice(0, VISUAL + length)
        torch.testing.assert_close(z[row, :, kept], expected[row, :, kept], rtol=1e-4, atol=1e-5)
        assert not z[row, :, VISUAL + length:].any()
    unmasked = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    assert not torch.allclose(z[:, :, :VISUAL], unmasked[:, :, :VISUAL], atol=1e-3)


def test_guided_call_analyses_the_second_half_and_masks_each_branch(pipe):
    recorder = VisitRecorder()
    vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], analyses=[recorder], num_inference_steps=2, steps=[1],
                    guidance_scale=3.0, negative_prompt=NEGATIVE)
    layout = recorder.layouts[(1, "blocks.0.attn")]
    assert (layout.frames, layout.height, layout.width, layout.prompt_tokens) == (3, 2, 3, 256)
    assert layout.visual == slice(0, VISUAL) and layout.prompt == slice(VISUAL, VISUAL + 256)
    assert layout.batch == 2 and layout.analysed_rows == slice(1, 2)
    assert layout.frame_spans == ((0, 0), (1, 6), (7, 12)) and layout.pixels_per_token == (16, 16)
    lengths = [len(pipe.tokenizer(text)["input_ids"]) for text in (NEGATIVE, PROMPT)]
    assert torch.equal(layout.prompt_mask, torch.arange(256)[None] < torch.tensor(lengths)[:, None])


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _heads(x: torch.Tensor, norm: torch.nn.Module | None = None) -> torch.Tensor:
    """``[B, S, H*d]`` -> ``[B, H, S, d]``, RMS-normalised per head with the norm's weight and eps."""
    x = x.unflatten(-1, (2, 16)).transpose(1, 2)
    return x if norm is None else _rms(x, norm.eps) * norm.weight


@pytest.mark.parametrize("reduction", ["first", "mean"])
def test_concept_stream_follows_the_prompt_stream_by_hand(pipe, reduction):
    """Oracle, written out from the weights: concepts enter through the caption projection (T5
    rows of the concept encoded alone, reduced over sub-tokens), are modulated by block 0's
    ``norm1_context`` (RMS norm times ``1 + scale``), projected by ``add_*_proj`` and the
    per-head RMS norms, attend to [concepts ; visual keys], and are updated by the tanh-gated,
    RMS-normalised attention output and SwiGLU MLP; the last block modulates them with its
    continuous norm."""
    adapter, transformer = adapter_for(pipe), pipe.transformer
    inputs = transformer_inputs(pipe)
    concepts = ["grass", "walking"]
    with pytest.warns(UserWarning, match="'walking' splits into 2 tokens"):
        tokens = adapter.encode_concepts(concepts, reduction)
    recorder = VisitRecorder(keep=[(t, "concept") for t in "qkvz"] + [("k", "visual"), ("v", "visual")])
    recorder.bind(TraceContext(concepts=concepts, num_layers=2, num_inference_steps=1))
    with torch.no_grad():
        with installed(adapter, Runtime([recorder], concepts=concept_state(adapter, tokens, PROMPT))):
            transformer(**inputs)
        ids = pipe.tokenizer(concepts, padding="max_length", max_length=256, return_tensors="pt")
        t5 = pipe.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
        expected_rows = torch.stack([t5[0, 0], t5[1, 0] if reduction == "first" else t5[1, :2].mean(dim=0)])
        torch.testing.assert_close(tokens.embeddings, expected_rows)
        temb = transformer.time_embed(inputs["timestep"], inputs["encoder_hidden_states"],
                                      inputs["encoder_attention_mask"], hidden_dtype=torch.float32)[0]
        hidden = F.linear(tokens.embeddings, transformer.time_embed.caption_proj.weight,
                          transformer.time_embed.caption_proj.bias)[None]
        for layer, block in enumerate(transformer.transformer_blocks):
            attn, site = block.attn1, f"blocks.{layer}.attn"
            if layer == 0:
                emb = F.linear(F.silu(temb), block.norm1_context.linear.weight, block.norm1_context.linear.bias)
                scale_msa, gate_msa, scale_mlp, gate_mlp = emb.chunk(4, dim=1)
            else:  # context_pre_only: MochiLayerNormContinuous
                norm = block.norm1_context.linear_1
                scale_msa = F.linear(F.silu(temb), norm.weight, norm.bias)
            normed = _rms(hidden, 1e-6 if layer == 0 else 1e-5) * (1 + scale_msa[:, None])
            q = _heads(F.linear(normed, attn.add_q_proj.weight), attn.norm_added_q)
            k = _heads(F.linear(normed, attn.add_k_proj.weight), attn.norm_added_k)
            v = _heads(F.linear(normed, attn.add_v_proj.weight))
            keys = torch.cat([k, recorder.one(0, site, "k", "visual")], dim=2)
            values = torch.cat([v, recorder.one(0, site, "v", "visual")], dim=2)
            z = torch.softmax(q @ keys.transpose(-1, -2) / 4.0, dim=-1) @ values
            for letter, tensor in zip("qkvz", (q, k, v, z)):
                torch.testing.assert_close(recorder.one(0, site, letter, "concept"), tensor, rtol=1e-4, atol=1e-5)
            if layer == 0:
                out = F.linear(z.transpose(1, 2).flatten(2), attn.to_add_out.weight, attn.to_add_out.bias)
                hidden = hidden + _rms(out, 1e-6) * torch.tanh(gate_msa)[:, None]
                gate, up = F.linear(_rms(hidden, 1e-6) * (1 + scale_mlp[:, None]),
                                    block.ff_context.net[0].proj.weight).chunk(2, dim=-1)
                hidden = hidden + _rms(F.linear(gate * F.silu(up), block.ff_context.net[2].weight), 1e-6) \
                    * torch.tanh(gate_mlp)[:, None]


def test_geometry_from_the_pipelines_vae_factors(pipe):
    adapter = adapter_for(pipe)
    assert adapter.default_geometry() == GEOMETRY
    assert (adapter.temporal_compression, adapter.spatial_compression) == (6, 8)
    layout = adapter.layout_for(19, 32, 64)
    assert (layout.frames, layout.height, layout.width) == (4, 2, 4)
    assert layout.frame_spans == ((0, 0), (1, 6), (7, 12), (13, 18))
    with pytest.raises(ValueError, match=r"Mochi: num_frames must be 6\*n \+ 1 .*height must be a positive multiple "
                                         r"of 16"):
        adapter.check_geometry(14, 40, 48)
    from diffusers import MochiTransformer3DModel

    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_") and k != "native_geometry"}
    pipe.register_modules(transformer=MochiTransformer3DModel(**config))
    assert adapter_for(pipe).default_geometry() == (19, 480, 848)  # the pipeline's own defaults


@pytest.mark.parametrize("inverted", [True, False])
def test_schedule_and_noising_follow_the_linear_quadratic_sigmas(pipe, inverted):
    """Oracle: the pipeline's linear-quadratic sigmas; Mochi's scheduler stores them inverted
    (timesteps count up from 0 = noise) and renoising still mixes ``(1 - sigma) x + sigma n``."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

    pipe.scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=inverted)
    adapter = adapter_for(pipe)
    sigmas = torch.tensor(linear_quadratic_schedule(6, 0.025))
    timesteps = adapter.timesteps_for(6, GEOMETRY)
    torch.testing.assert_close(timesteps, ((1 - sigmas) if inverted else sigmas) * 1000)
    clean, noise = torch.randn(1, 12, 3, 4, 6), torch.randn(1, 12, 3, 4, 6)
    for index in (1, 5):
        torch.testing.assert_close(adapter.noise_latents(clean, noise, timesteps[index]),
                                   (1 - sigmas[index]) * clean + sigmas[index] * noise)


def test_encode_video_normalises_as_the_pipeline_decodes(pipe):
    adapter = adapter_for(pipe)
    pixels = to_model_pixels(np.random.default_rng(2).integers(0, 256, (*GEOMETRY, 3), dtype=np.uint8))
    with torch.no_grad():
        latents = adapter.encode_video(pixels, torch.Generator().manual_seed(0))
        raw = pipe.vae.encode(pixels.permute(1, 0, 2, 3)[None]).latent_dist.sample(torch.Generator().manual_seed(0))
    config = pipe.vae.config
    mean, std = (torch.tensor(values).view(1, 12, 1, 1, 1) for values in (config.latents_mean, config.latents_std))
    assert latents.shape == (1, 12, 3, 4, 6)
    torch.testing.assert_close(latents * std / config.scaling_factor + mean, raw)  # the pipeline's decode-side inverse
    assert not torch.allclose(latents, raw)


def test_another_processor_is_refused_and_the_model_restored(pipe):
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    class Mine(MochiAttnProcessor2_0):
        pass

    attention = pipe.transformer.transformer_blocks[1].attn1
    attention.processor = Mine()
    with pytest.raises(NotImplementedError, match="transformer_blocks.1.attn1 uses Mine"):
        vidinterp.trace(pipe, prompt=PROMPT, concepts=["dog"], num_inference_steps=2)
    assert type(attention.processor) is Mine
    assert type(pipe.transformer.transformer_blocks[0].attn1.processor) is MochiAttnProcessor2_0


def test_cli_runs_every_default_method(tmp_path):
    from vidinterp.cli import main

    assert main(["run", "--model", "tiny-mochi", "--out", str(tmp_path), "--steps", "4"]) == 0
    assert set(vidinterp.Trace.load(tmp_path / "trace.nc").maps.data_vars) == {
        "imap", "gramcol", "concept_attention", "cross_attention"}
