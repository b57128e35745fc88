"""`vidinterp.trace`: both modes, results, persistence and every input error."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr

import vidinterp
import vidinterp.testing
from vidinterp.analyses import CrossAttention


@pytest.fixture(scope="module")
def pipe():
    return vidinterp.testing.tiny_pipeline("cogvideox")


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)


def test_generation_returns_labelled_maps(pipe):
    trace = vidinterp.trace(pipe, prompt="a dog on grass", concepts=["dog", "grass"], num_inference_steps=5,
                            analyses=[CrossAttention()])
    maps = trace.maps
    assert maps.cross_attention.dims == ("concept", "frame", "y", "x")
    assert list(maps.concept.values) == ["dog", "grass"]
    assert maps.sizes["frame"] == 3 and maps.sizes["y"] == 4 and maps.sizes["x"] == 6
    assert list(maps.pixel_frame_first.values) == [0, 1, 5] and list(maps.pixel_frame_last.values) == [0, 4, 8]
    assert trace.attrs["analysed_steps"] == [1, 2, 3, 4]  # default skips the first 30%
    assert trace.video.shape == (9, 32, 48, 3) and trace.video.dtype == np.uint8
    assert maps.attrs["prompt"] == "a dog on grass"


def test_generation_video_identical_to_untraced_pipeline(pipe):
    reference = pipe(prompt="a dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                     output_type="np", num_frames=9, height=32, width=48, max_sequence_length=16).frames[0]
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=3, seed=0)
    assert np.array_equal(trace.video, np.round(np.clip(reference, 0, 1) * 255).astype(np.uint8))


def test_renoise_analyses_only_the_run_steps(pipe, clip):
    trace = vidinterp.trace(pipe, video=clip, prompt="a dog", concepts=["dog", "sky"], num_inference_steps=10,
                            renoise_step=4, num_renoise_steps=2)
    assert trace.attrs["mode"] == "renoise" and trace.attrs["analysed_steps"] == [4, 5]
    assert np.array_equal(trace.video, clip)


def test_renoise_default_step_follows_reference_fraction(pipe, clip):
    trace = vidinterp.trace(pipe, video=clip, prompt="a dog", concepts=["dog"], num_inference_steps=50)
    assert trace.attrs["analysed_steps"] == [30]  # CogVideoX reference: step 30 of 50


def test_renoise_from_file_with_resampling(pipe, tmp_path):
    import imageio.v3 as iio

    frames = np.random.default_rng(1).integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, fps=8, plugin="pyav", codec="libx264")
    with pytest.raises(ValueError, match="12 frames at 40x56.*9 frames at 32x48.*resample=True"):
        vidinterp.trace(pipe, video=path, prompt="a dog", concepts=["dog"], num_frames=9, height=32, width=48,
                        resample=False)
    trace = vidinterp.trace(pipe, video=path, prompt="a dog", concepts=["dog"], num_frames=9, height=32,
                            width=48, resample=True, num_inference_steps=5)
    assert trace.video.shape == (9, 32, 48, 3)


def test_video_with_wrong_geometry_names_expected_values(pipe):
    with pytest.raises(ValueError, match=r"num_frames must be 4\*n \+ 1.*got 8"):
        vidinterp.trace(pipe, video=np.zeros((8, 32, 48, 3), np.uint8), prompt="a", concepts=["dog"], resample=False)
    with pytest.raises(ValueError, match="height must be a positive multiple of 8 pixels, got 30"):
        vidinterp.trace(pipe, video=np.zeros((9, 30, 48, 3), np.uint8), prompt="a", concepts=["dog"], resample=False)
    with pytest.raises(ValueError, match=r"shape \[frames, height, width, 3\]"):
        vidinterp.trace(pipe, video=np.zeros((9, 32, 48)), prompt="a", concepts=["dog"])


@pytest.mark.parametrize("concepts, message", [
    ([], "at least one concept"),
    (["dog", "dog"], r"distinct; \['dog'\] appear more than once"),
    (["dog", " "], "non-empty string"),
])
def test_bad_concepts(pipe, concepts, message):
    with pytest.raises(ValueError, match=message):
        vidinterp.trace(pipe, prompt="a dog", concepts=concepts, num_inference_steps=2)


def test_multi_token_concept_warns_with_reduction(pipe):
    for reduction, how in (("first", "first sub-token"), ("mean", "mean of its sub-tokens")):
        with pytest.warns(UserWarning, match=rf"'walking' splits into 2 tokens \['walk', '##ing'\]; using the {how}"):
            vidinterp.trace(pipe, prompt="a dog", concepts=["walking"], num_inference_steps=2,
                            concept_reduction=reduction)
    with pytest.raises(ValueError, match="concept reduction must be one of"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, concept_reduction="max")


def test_multi_token_reductions_differ(pipe):
    adapter = vidinterp.adapter_for(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = adapter.encode_concepts(["walking"], "first").embeddings
        mean = adapter.encode_concepts(["walking"], "mean").embeddings
        single = adapter.encode_concepts(["dog"], "mean").embeddings
    assert not torch.allclose(first, mean)
    assert torch.equal(single, adapter.encode_concepts(["dog"], "first").embeddings)


def test_steps_outside_schedule(pipe, clip):
    with pytest.raises(ValueError, match=r"steps \[7\] are outside.*0\.\.4"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=5, steps=[2, 7])
    with pytest.raises(ValueError, match="renoise_step=9 with num_renoise_steps=2 falls outside"):
        vidinterp.trace(pipe, video=clip, prompt="a dog", concepts=["dog"], num_inference_steps=10,
                        renoise_step=9, num_renoise_steps=2)
    with pytest.raises(ValueError, match=r"steps \[2\] are outside.*4\.\.4"):
        vidinterp.trace(pipe, video=clip, prompt="a dog", concepts=["dog"], num_inference_steps=10,
                        renoise_step=4, steps=[2])


def test_unsupported_model_lists_families():
    fake = SimpleNamespace(transformer=torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"unsupported model class Linear; supported families.*cogvideox"):
        vidinterp.trace(fake, prompt="a", concepts=["dog"])
    with pytest.raises(TypeError, match="has no `transformer` component"):
        vidinterp.trace(SimpleNamespace(unet=None), prompt="a", concepts=["dog"])


def test_model_path_loads_offline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "tiny")
    trace = vidinterp.trace(str(tmp_path / "tiny"), prompt="a dog", concepts=["dog"], num_inference_steps=2)
    assert trace.maps.cross_attention.sizes["concept"] == 1
    with pytest.raises(OSError, match="never downloads"):
        vidinterp.trace(str(tmp_path / "missing"), prompt="a dog", concepts=["dog"])


def test_save_and_load_netcdf_round_trip(pipe, tmp_path):
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog", "grass"], num_inference_steps=3)
    path = trace.save(tmp_path / "trace.nc")
    loaded = vidinterp.Trace.load(path)
    xr.testing.assert_allclose(loaded.maps.cross_attention, trace.maps.cross_attention)
    assert np.array_equal(loaded.video, trace.video)
    assert loaded.attrs["prompt"] == "a dog"


def test_list_sites_shapes(pipe):
    sites = vidinterp.list_sites(pipe, num_frames=13, height=32, width=48, concepts=3)
    assert sites["shape"].sel(hook="blocks.0.attn.hook_q").values.tolist() == [1, 2, 16 + 4 * 4 * 6, 16]
    assert sites["shape"].sel(hook="blocks.1.attn.hook_concept_z").values.tolist() == [1, 2, 3, 16]
    assert str(sites["module"].sel(hook="blocks.1.attn.hook_z").values) == "transformer_blocks.1.attn1.processor.hook_z"


def test_generation_needs_prompt(pipe):
    with pytest.raises(ValueError, match="generation needs a prompt"):
        vidinterp.trace(pipe, concepts=["dog"])


def test_analysis_for_absent_site_kind_is_a_clear_error(pipe):
    from vidinterp.analyses.lambda2 import Lambda2

    analysis = Lambda2()
    analysis.site_kinds = ("cross",)
    with pytest.raises(ValueError, match=r"reads sites of kind \['cross'\], but cogvideox has sites of kind \['joint'\]"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], analyses=[analysis], num_inference_steps=2)


def test_analysis_with_unknown_group_fails_before_the_model_runs(pipe):
    analysis = CrossAttention()
    analysis.group = "extras"
    visits = []
    analysis.update = visits.append
    with pytest.raises(ValueError, match=r"'cross_attention' declares group 'extras'; expected one of \('maps', 'heads', 'layers', 'diagnostics'\)"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], analyses=[analysis], num_inference_steps=2)
    assert not visits


def test_same_call_returns_maps_for_every_family():
    """One `vidinterp.trace` call, unchanged, on a tiny pipeline of each family."""
    for family in vidinterp.adapter_classes():
        tiny = vidinterp.testing.tiny_pipeline(family)
        trace = vidinterp.trace(tiny, prompt="a red dog walking on green grass", concepts=["dog", "grass"],
                                num_inference_steps=3)
        assert "cross_attention" in trace.maps and "gramcol" in trace.maps, family
        assert trace.maps.cross_attention.dims == ("concept", "frame", "y", "x"), family
        assert np.isfinite(trace.maps.gramcol.values).all(), family


def test_two_analyses_with_one_name_are_refused_and_renamed_instances_both_return(pipe):
    from vidinterp.analyses.imap import IMAP

    with pytest.raises(ValueError, match=r"distinct names.*\['imap'\].*analysis.name = 'imap_k3'"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, analyses=[IMAP(), IMAP(k=1)])
    renamed = IMAP(k=1)
    renamed.name = "imap_k1"
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, analyses=[IMAP(), renamed])
    assert {"imap", "imap_k1"} <= set(trace.maps.data_vars)
    assert not np.allclose(trace.maps["imap"].values, trace.maps["imap_k1"].values)
