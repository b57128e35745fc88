"""The shapes model zoo: pipeline assembly, latent mapping, tokenizer errors, weights round trip
(on an untrained instance: fast, no network), and the shipped weights: offline loading, size,
maps that find the named colour's object, samples in the prompted colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline

import vidinterp
from vidinterp.datasets.shapes import COLORS, generate_clip, load_clip
from vidinterp.zoo import DEMO_SEED, UnknownWordError, available, build_shapes_pipeline, demo_clip, load, weights_path
from vidinterp.zoo.latent import ShapesLatentMapping
from vidinterp.zoo.shapes import (
    ShapesModelConfig, clip_latents, export_state, model_state, read_export, train_clip_config, velocity_loss,
    warm_start,
)


@pytest.fixture(scope="module")
def pipe():
    return build_shapes_pipeline(ShapesModelConfig(num_layers=2))


def test_pipeline_is_real_cogvideox(pipe):
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    assert isinstance(pipe, CogVideoXPipeline)
    assert isinstance(pipe.transformer, CogVideoXTransformer3DModel)
    assert pipe.vae_scale_factor_spatial == 1 and pipe.vae_scale_factor_temporal == 1


def test_latent_mapping_round_trip():
    vae = ShapesLatentMapping()
    clip = generate_clip(train_clip_config(ShapesModelConfig()), seed=1)
    pixels = torch.from_numpy(clip.frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    latents = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, clip.num_frames, clip.height, clip.width)
    occupancy = latents[0, 3].bool().numpy()
    np.testing.assert_array_equal(occupancy, clip.masks.any(axis=0))
    decoded = vae.decode(latents).sample
    torch.testing.assert_close(decoded, pixels, atol=1e-5, rtol=0)


def test_unknown_words_list_the_vocabulary(pipe):
    with pytest.raises(UnknownWordError, match="vocabulary") as error:
        pipe.tokenizer("a pink circle")
    vocabulary = pipe.shapes_config.vocabulary
    assert "'pink'" in str(error.value) and all(f"'{word}'" in str(error.value) for word in vocabulary)
    assert "'ring'" not in str(error.value)  # a generator shape this model is not trained on
    ids = pipe.tokenizer("a red circle moving left", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and len(set(ids)) == 5  # one distinct token per word
    with pytest.raises(UnknownWordError):
        vidinterp.trace(pipe, video=np.zeros((6, 32, 32, 3), np.uint8), prompt="a red circle",
                        concepts=["dog"], num_inference_steps=4)


def test_trace_renoises_a_shapes_clip(pipe):
    clip = generate_clip(train_clip_config(ShapesModelConfig(), (2, 2)), seed=5)
    trace = vidinterp.trace(pipe, video=clip.frames, prompt=clip.caption, concepts=clip.concepts,
                            num_inference_steps=10)
    maps = trace.maps["imap"]
    assert maps.sizes == {"concept": len(clip.concepts), "frame": 6, "y": 8, "x": 8}
    assert np.isfinite(maps.values).all()


@pytest.mark.parametrize("text_layers", [0, 1])
def test_only_the_text_encoder_can_bind_words_to_objects(text_layers):
    """CogVideoX gives text tokens no position, so with a layer-free text encoder the DiT sees a
    caption as a bag of words: exchanging the colours of two objects changes nothing."""
    pipe = build_shapes_pipeline(ShapesModelConfig(num_layers=1, text_layers=text_layers))
    torch.manual_seed(0)  # strong text pathways: T5 and the DiT initialise them with small weights
    for module in [*pipe.text_encoder.modules(), pipe.transformer.patch_embed.text_proj]:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.5)
    captions = ["a red circle moving left and a blue square", "a blue circle moving left and a red square",
                "a green triangle moving up and a white diamond"]
    embeddings = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=12,
                                    device="cpu")[0]
    noisy = torch.randn(1, 6, 4, 32, 32, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1, -1)
    rotary = pipe._prepare_rotary_positional_embeddings(32, 32, 6, "cpu")
    with torch.no_grad():
        out = pipe.transformer(hidden_states=noisy, encoder_hidden_states=embeddings, timestep=torch.tensor([500] * 3),
                               image_rotary_emb=rotary, return_dict=False)[0]
    # output change from swapping the colours, relative to the change from another caption
    swap_effect = float((out[0] - out[1]).abs().max()) / float((out[0] - out[2]).abs().max())
    if text_layers == 0:
        assert swap_effect < 1e-3  # float32 summation order only
    else:
        assert swap_effect > 5e-3


def test_warm_start_grows_text_layers_as_identities():
    source = build_shapes_pipeline(ShapesModelConfig(num_layers=1, text_layers=0), seed=3)
    for weight in source.text_encoder.parameters():  # a "trained" source, unlike a fresh init
        torch.nn.init.normal_(weight, std=1.0, generator=torch.Generator().manual_seed(1))
    grown = build_shapes_pipeline(ShapesModelConfig(num_layers=1, text_layers=2), seed=4)
    new = warm_start(grown, model_state(source))
    assert new and all(name.startswith("text_encoder.encoder.block.") for name in new)
    captions = ["a red circle moving left and a blue square", "a green diamond"]
    embed = [pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=12, device="cpu")[0]
             for pipe in (source, grown)]
    torch.testing.assert_close(embed[1], embed[0], atol=0, rtol=0)
    for name, value in model_state(source).items():
        torch.testing.assert_close(model_state(grown)[name], value, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no place for the source weights"):
        warm_start(build_shapes_pipeline(ShapesModelConfig(num_layers=1, text_layers=0)), model_state(grown))
    with pytest.raises(ValueError, match="shape"):
        warm_start(build_shapes_pipeline(ShapesModelConfig(num_layers=1, text_dim=32)), model_state(source))


def test_velocity_loss_is_the_v_prediction_mse(pipe):
    clips = [generate_clip(train_clip_config(ShapesModelConfig()), seed=s) for s in (1, 2)]
    latents = clip_latents(pipe, clips)
    assert latents.shape == (2, 6, 4, 32, 32)
    torch.testing.assert_close(latents[0, :, :3], torch.from_numpy(clips[0].frames).permute(0, 3, 1, 2).float() / 255 * 2)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([100, 700])
    embeds = pipe.encode_prompt([c.caption for c in clips], do_classifier_free_guidance=False, max_sequence_length=12,
                                device="cpu")[0]
    rotary = pipe._prepare_rotary_positional_embeddings(32, 32, 6, "cpu")
    alphas_cumprod = pipe.scheduler.alphas_cumprod[timesteps].float()
    alpha, sigma = alphas_cumprod.sqrt().view(2, 1, 1, 1, 1), (1 - alphas_cumprod).sqrt().view(2, 1, 1, 1, 1)
    with torch.no_grad():
        loss = velocity_loss(pipe, latents, noise, timesteps, embeds, rotary)
        prediction = pipe.transformer(hidden_states=alpha * latents + sigma * noise, encoder_hidden_states=embeds,
                                      timestep=timesteps, image_rotary_emb=rotary, return_dict=False)[0]
    squared = (prediction - (alpha * noise - sigma * latents)) ** 2
    torch.testing.assert_close(loss, squared.mean(), rtol=1e-5, atol=1e-6)
    weights = torch.rand(2, 6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weighted = velocity_loss(pipe, latents, noise, timesteps, embeds, rotary, weights)
        ones = velocity_loss(pipe, latents, noise, timesteps, embeds, rotary, torch.ones(1))
    full = weights.expand_as(squared)
    torch.testing.assert_close(weighted, (full * squared).sum() / full.sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ones, loss, rtol=1e-6, atol=1e-7)


def test_generation_runs(pipe):
    out = pipe("a red circle moving left", num_frames=6, height=32, width=32, num_inference_steps=2,
               output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 6, 32, 32, 3)


def test_export_and_load_round_trip(tmp_path, pipe):
    config = ShapesModelConfig(num_layers=2)
    path = export_state(pipe, config, tmp_path, metadata={"step": 12})
    loaded = load(weights=path)
    for key, value in model_state(pipe).items():
        torch.testing.assert_close(model_state(loaded)[key], value)
    read_config, state, metadata = read_export(path)  # what a warm start from shipped weights reads
    assert read_config == config and metadata == {"step": "12"} and set(state) == set(model_state(pipe))
    warm_start(build_shapes_pipeline(config), state)
    assert not hasattr(loaded, "vidinterp_calibration")
    from vidinterp.analyses.lambda2 import save_layer_scores

    save_layer_scores({0: 0.8, 1: 0.6}, "shapes", tmp_path / "shapes.lambda2.json", threshold=0.65)  # ships beside
    assert load(weights=path).vidinterp_calibration == {"lambda2": {0: 0.8, 1: 0.6}, "lambda2_threshold": 0.65}


def test_bundled_demo_clip_is_the_documented_clip():
    entry = demo_clip("shapes")
    clip = load_clip(entry)  # decodes the bundled mp4
    expected = generate_clip(train_clip_config(ShapesModelConfig(), (2, 2)), DEMO_SEED)
    assert entry.seed == DEMO_SEED and entry.caption == expected.caption and len(clip.objects) == 2
    np.testing.assert_array_equal(clip.masks, expected.masks)
    assert np.abs(clip.frames.astype(int) - expected.frames.astype(int)).max() <= 2  # near-lossless H.264
    with pytest.raises(ValueError, match="available"):
        demo_clip("nope")


def test_load_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_shapes.py"):
        load(weights=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="available"):
        weights_path("nope")


# ------------------------------------------------------------------ the shipped model
@pytest.fixture(scope="module")
def shipped():
    return load("shapes")


def test_shipped_weights_are_small_and_describe_the_default_config(shipped):
    assert "shapes" in available()
    assert weights_path("shapes").stat().st_size <= 15_000_000
    assert shipped.shapes_config == ShapesModelConfig()  # the defaults document the shipped model
    assert isinstance(shipped, CogVideoXPipeline)  # ShapesPipeline only changes a default
    assert set(shipped.vidinterp_calibration) == {"lambda2", "lambda2_threshold"}


def test_shipped_model_maps_tell_the_named_colour_from_the_other_object(shipped):
    """On held-out two-object clips, GramCol's map of each colour word ranks its object's pixels
    above the other object's (AUROC), and ConceptAttention's binarised maps of the noun and colour
    words overlap their objects clearly better than seeded uniform random maps do
    (foreground/background mIoU); both with the softmax over concepts, the benchmark's best
    variants for these scores (``vidinterp.datasets.scoring`` defines both scores)."""
    from vidinterp.analyses.concept_attention import ConceptAttention
    from vidinterp.analyses.gramcol import GramCol
    from vidinterp.datasets.scoring import ALL_METRICS, score_maps
    from vidinterp.datasets.shapes import clip_seed

    rng = np.random.default_rng(0)
    config = train_clip_config(ShapesModelConfig(), (2, 2))
    clips = (generate_clip(config, clip_seed(60_000_011, i)) for i in range(100))
    distinct = [clip for clip in clips if clip.objects[0].color != clip.objects[1].color][:10]
    samples = {name: {metric: [] for metric in ALL_METRICS} for name in ("gramcol", "concept_attention", "random")}
    for clip in distinct:
        trace = vidinterp.trace(shipped, video=clip.frames, prompt=clip.caption, concepts=clip.concepts,
                                analyses=[GramCol(concept_softmax="final"), ConceptAttention(concept_softmax="final")],
                                num_inference_steps=50, seed=0)
        maps = {method: trace.maps[method].transpose("concept", "frame", "y", "x").values
                for method in ("gramcol", "concept_attention")}
        maps["random"] = rng.random(maps["gramcol"].shape)
        for name, values in maps.items():
            for metric, scores in score_maps(clip, clip.concepts, values).items():
                samples[name][metric] += scores
    assert np.mean(samples["gramcol"]["auroc_color"]) > 0.7  # measured 0.76 (chance 0.5)
    miou, random_miou = np.mean(samples["concept_attention"]["object_miou"]), np.mean(samples["random"]["object_miou"])
    assert miou > random_miou + 0.1  # measured 0.43 against 0.27


@pytest.mark.parametrize("colour", list(COLORS))
def test_shipped_model_draws_the_prompted_colour(shipped, colour):
    config = ShapesModelConfig()
    shape = config.shapes[0]
    out = shipped(f"a {colour} {shape}", num_frames=config.num_frames, height=config.height, width=config.width,
                  num_inference_steps=20, guidance_scale=4.0, output_type="np",  # default text length: trained one
                  generator=torch.Generator().manual_seed(0))
    frames = np.asarray(out.frames[0]) * 255  # [F, H, W, 3]
    background = np.median(frames.reshape(-1, 3), axis=0)
    foreground = frames[np.abs(frames - background).max(axis=-1) > 100]
    assert len(foreground) > 0, "the sample has no object"
    names = list(COLORS)
    palette = np.array([COLORS[name] for name in names], float)
    nearest = names[int(np.argmin(np.linalg.norm(palette - foreground.mean(axis=0), axis=1)))]
    assert nearest == colour
