"""Head outputs and their PaCMAP embeddings (IMAP paper Fig. 17): the recorded outputs are the
model's own ``hook_z`` rows at the documented subsample; embeddings keep each point's frame, are
deterministic with a seed, and separate frames for a head whose outputs cluster by frame
(silhouette by frame, sklearn as the oracle), on a synthetic Dataset and on the planted motion
head; the figure's marker colours are the token frames."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import silhouette_score

import vidinterp
from vidinterp.analyses.head_outputs import HeadOutputs, subsample_tokens
from vidinterp.analyses.separation import Separation
from vidinterp.plotting.embeddings import head_embeddings, head_outputs, plot_head_embeddings
from vidinterp.selectors import LayerIndices, StepIndices
from vidinterp.testing import VisitRecorder, planted_pipeline, planted_trace, tiny_pipeline
from vidinterp.testing.conformance import CONCEPTS, PROMPT



def clip_for(pipe) -> np.ndarray:
    frames, height, width = vidinterp.adapter_for(pipe).default_geometry()
    return np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- the analysis
@pytest.fixture(scope="module")
def recorded():
    """A tiny CogVideoX renoise at 128x192 px (3 latent frames of 16x24 tokens): HeadOutputs
    with a small per-frame cap, beside a recorder of the same visits' ``z``."""
    pipe = tiny_pipeline("cogvideox")
    outputs = HeadOutputs(max_tokens_per_frame=20, seed=3, layers=LayerIndices([1]))
    recorder = VisitRecorder(keep=[("z", "visual")], layers=LayerIndices([1]))
    trace = vidinterp.trace(pipe, video=np.random.default_rng(0).integers(0, 256, (9, 128, 192, 3), dtype=np.uint8),
                            prompt=PROMPT, concepts=CONCEPTS, analyses=[outputs, recorder], num_inference_steps=4,
                            height=128, width=192)
    return trace, recorder


def test_subsample_is_a_seeded_regular_grid_repeated_in_every_frame():
    tokens = subsample_tokens(3, 16, 24, 20, seed=3)
    per_frame = tokens.reshape(3, -1)
    assert per_frame.shape[1] <= 20
    offsets = per_frame - per_frame[:, :1]  # positions within each frame, relative to its first kept token
    np.testing.assert_array_equal(offsets, np.broadcast_to(offsets[0], offsets.shape))
    np.testing.assert_array_equal(per_frame[:, 0] // (16 * 24), [0, 1, 2])
    ys, xs = per_frame[0] // 24, per_frame[0] % 24
    stride = np.diff(np.unique(xs))
    assert len(set(stride)) == 1 and set(np.diff(np.unique(ys))) == set(stride)  # one stride, rows and columns
    assert stride[0] == 5  # ceil(sqrt(384 / 20)) = 5 gives ceil(16/5) * ceil(24/5) = 20 tokens
    np.testing.assert_array_equal(tokens, subsample_tokens(3, 16, 24, 20, seed=3))
    assert any(not np.array_equal(tokens, subsample_tokens(3, 16, 24, 20, seed=s)) for s in range(4, 10))
    np.testing.assert_array_equal(subsample_tokens(2, 2, 3, 64, seed=0), np.arange(12))  # small frames: every token
    with pytest.raises(ValueError, match="max_tokens_per_frame must be a positive integer"):
        subsample_tokens(2, 2, 3, 0, seed=0)


def test_recorded_outputs_are_the_models_hook_z_at_the_kept_tokens(recorded):
    trace, recorder = recorded
    outputs = head_outputs(trace)
    assert outputs.dims == ("step", "layer", "head", "token", "channel") and outputs.dtype == np.float32
    assert list(outputs["layer"].values) == [1]
    tokens = subsample_tokens(3, 16, 24, 20, seed=3)
    np.testing.assert_array_equal(outputs["token"].values, tokens)
    np.testing.assert_array_equal(outputs["frame"].values, tokens // 384)
    np.testing.assert_array_equal(outputs["y"].values, tokens % 384 // 24)
    np.testing.assert_array_equal(outputs["x"].values, tokens % 24)
    for step in outputs["step"].values:
        z = recorder.one(int(step), "blocks.1.attn", "z", "visual")[0]  # [H, P, d], the analysed row
        np.testing.assert_array_equal(outputs.sel(step=step, layer=1).values, z[:, tokens].float().numpy())
    # the stored names never align with other diagnostics' step / layer / frame
    assert set(trace.diagnostics["head_outputs"].dims) == {"head_outputs_step", "head_outputs_layer", "head",
                                                           "head_outputs_token", "head_outputs_channel"}


def test_default_layer_is_the_middle_one_and_it_merges_over_steps():
    pipe = tiny_pipeline("cogvideox")
    video = clip_for(pipe)
    runs = [HeadOutputs(steps=StepIndices(steps)) for steps in ([2], [3], [2, 3])]
    traces = [vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS, analyses=[run],
                              num_inference_steps=4, renoise_step=2, num_renoise_steps=2) for run in runs]
    assert list(head_outputs(traces[2])["layer"].values) == [pipe.transformer.config.num_layers // 2]
    merged = runs[0].merge(runs[1]).result()
    xr.testing.assert_equal(merged["head_outputs"], traces[2].diagnostics["head_outputs"])
    with pytest.raises(ValueError, match=r"both head_outputs runs recorded \(step, layer\) \[\(2, "):
        runs[0].merge(runs[2])


def test_memory_budget_bounds_the_records_with_a_clear_error():
    pipe = tiny_pipeline("cogvideox")
    video = clip_for(pipe)

    def traced(max_bytes: int, steps: int):
        return vidinterp.trace(pipe, video=video, prompt=PROMPT, concepts=CONCEPTS,
                               analyses=[HeadOutputs(max_bytes=max_bytes)], num_inference_steps=4, renoise_step=1,
                               num_renoise_steps=steps)

    one_record = traced(2**20, 1).diagnostics["head_outputs"].nbytes  # float32, one (step, layer)
    assert traced(one_record, 1).diagnostics["head_outputs"].nbytes == one_record  # exactly the budget: kept
    with pytest.raises(ValueError, match=rf"2 \(step, layer\) records .* over max_bytes={one_record} "
                                         r".*select fewer steps .*max_tokens_per_frame \(now 64\)"):
        traced(one_record, 2)


# ---------------------------------------------------------------------------- embeddings
def synthetic_outputs(seed: int = 0) -> xr.Dataset:
    """Head outputs of 4 frames x 30 tokens, 8 channels: head 0 clusters by frame (a frame
    centre + small noise), head 1 is the same noise without the centres."""
    rng = np.random.default_rng(seed)
    frames, per_frame, channels = 4, 30, 8
    frame = np.repeat(np.arange(frames), per_frame)
    centres = rng.normal(scale=4.0, size=(frames, channels))
    noise = rng.normal(size=(2, frames * per_frame, channels))
    values = np.stack([centres[frame] + noise[0], noise[1]])[None].astype(np.float32)  # [layer, head, token, channel]
    coords = {"layer": [5], "head": [0, 1], "token": np.arange(frames * per_frame), "channel": np.arange(channels),
              "frame": ("token", frame), "y": ("token", np.tile(np.arange(per_frame) // 6, frames)),
              "x": ("token", np.tile(np.arange(per_frame) % 6, frames))}
    return xr.Dataset({"head_outputs": (("layer", "head", "token", "channel"), values)}, coords=coords)


@pytest.fixture(scope="module")
def synthetic_embeddings():
    return head_embeddings(synthetic_outputs(), layer=5, n_neighbors=8)


def test_embedding_separates_frames_only_for_the_head_whose_outputs_cluster_by_frame(synthetic_embeddings):
    embedding = synthetic_embeddings
    assert embedding["embedding"].dims == ("head", "token", "component") and embedding.sizes["component"] == 2
    frames = embedding["frame"].values
    clustered = silhouette_score(embedding["embedding"].sel(head=0).values, frames)
    noise = silhouette_score(embedding["embedding"].sel(head=1).values, frames)
    assert clustered > 0.6 and noise < 0.1, (clustered, noise)


def test_embeddings_are_deterministic_with_a_seed(synthetic_embeddings):
    again = head_embeddings(synthetic_outputs(), layer=5, n_neighbors=8)
    np.testing.assert_array_equal(again["embedding"].values, synthetic_embeddings["embedding"].values)
    other = head_embeddings(synthetic_outputs(), layer=5, n_neighbors=8, random_state=1)
    assert not np.array_equal(other["embedding"].values, synthetic_embeddings["embedding"].values)
    assert again.attrs["pacmap.random_state"] == 0 and again.attrs["pacmap.n_neighbors"] == 8


def test_points_carry_their_frame_in_the_figure(synthetic_embeddings):
    figure = plot_head_embeddings(synthetic_embeddings, cols=1)
    assert len(figure.data) == 2
    for panel, head in zip(figure.data, (0, 1)):
        np.testing.assert_array_equal(np.asarray(panel.marker.color), synthetic_embeddings["frame"].values)
        points = synthetic_embeddings["embedding"].sel(head=head).values
        np.testing.assert_array_equal(np.asarray(panel.x), points[:, 0])
        np.testing.assert_array_equal(np.asarray(panel.y), points[:, 1])
        np.testing.assert_array_equal(np.asarray(panel.customdata)[:, 1:],
                                      np.stack([synthetic_embeddings["y"].values, synthetic_embeddings["x"].values], 1))
        assert "frame %{customdata[0]}" in panel.hovertemplate
    assert figure.data[0].marker.showscale and not figure.data[1].marker.showscale  # one colour bar
    assert [a.text for a in figure.layout.annotations] == ["head 0", "head 1"]


def test_bad_requests_name_what_was_recorded():
    with pytest.raises(ValueError, match=r"layer 3 was not recorded; recorded layers: \[5\]"):
        head_embeddings(synthetic_outputs(), layer=3)
    with pytest.raises(ValueError, match=r"heads \[7\] not recorded; recorded heads: \[0, 1\]"):
        head_embeddings(synthetic_outputs(), layer=5, heads=[7])
    with pytest.raises(ValueError, match="more tokens than n_neighbors=500"):
        head_embeddings(synthetic_outputs(), layer=5, n_neighbors=500)
    with pytest.raises(KeyError, match="trace with the 'head_outputs' analysis"):
        head_embeddings(xr.Dataset(), layer=5)


def test_planted_motion_head_separates_frames_best_and_panels_show_its_chi():
    pipe = planted_pipeline("cogvideox")
    layer, motion = pipe.vidinterp_planted.motion
    trace, _ = planted_trace(pipe, analyses=[HeadOutputs(layers=LayerIndices([layer])), Separation(scores=("chi",))])
    embedding = head_embeddings(trace, layer)
    silhouettes = {int(head): silhouette_score(embedding["embedding"].sel(head=head).values, embedding["frame"].values)
                   for head in embedding["head"].values}
    others = [value for head, value in silhouettes.items() if head != motion]
    assert silhouettes[motion] > 0.2 and silhouettes[motion] > max(others) + 0.2, silhouettes
    chi = trace.heads["separation_chi"].sel(layer=layer, step=embedding.attrs["step"]).values
    np.testing.assert_allclose(embedding["separation_chi"].values, chi)
    titles = [a.text for a in plot_head_embeddings(embedding).layout.annotations]
    assert titles[motion] == f"head {motion} · CHI {chi[motion]:.3g}"


def test_trace_method_plots_the_embeddings_of_its_recorded_layer():
    pipe = planted_pipeline("cogvideox")
    layer, motion = pipe.vidinterp_planted.motion
    trace, _ = planted_trace(pipe, analyses=[HeadOutputs(layers=LayerIndices([layer]))])
    figure = trace.plot_head_embeddings(layer, heads=[motion], random_state=3)
    expected = head_embeddings(trace, layer, heads=[motion], random_state=3)
    np.testing.assert_allclose(figure.data[0].x, expected["embedding"].sel(head=motion, component=0).values)
    np.testing.assert_array_equal(figure.data[0].marker.color, expected["frame"].values)
