"""The planted models' parts against independent answers: the colour-to-latent mapping, the
planted clip and its token masks, the pixel-map convention, and each planted head's attention
pattern read from its hook points (the conformance suite checks the maps they produce)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from vidinterp.analysis import Analysis
from vidinterp.datasets.shapes import COLORS
from vidinterp.pixels import pixel_frame_index, pixel_maps
from vidinterp.testing import planted_clip, planted_families, planted_pipeline, planted_token_masks, planted_trace
from vidinterp.testing.latent import CLOCK_CHANNEL, COLOR_CHANNELS, OCCUPANCY_CHANNEL, PlantedLatentMapping

VIDEO_FAMILIES = [family for family in planted_families() if planted_pipeline(family).vidinterp_planted.motion]


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[1, 3, F, H, W]`` in ``[-1, 1]``."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0


def test_latent_mapping_counts_colours_per_cell_at_the_last_frame_of_each_span():
    mapping = PlantedLatentMapping(spatial_compression=2, temporal_compression=4, amplitude=8.0, clock_step=3.0)
    frames = np.zeros((9, 4, 6, 3), dtype=np.uint8)
    frames[0, 0, 0] = COLORS["red"]                  # latent frame 0 samples pixel frame 0
    frames[3, 2:4, 2:4] = COLORS["blue"]             # inside span 1..4 but not its last frame: ignored
    frames[4, 2:4, 2:4] = COLORS["blue"]             # latent frame 1 samples pixel frame 4
    frames[8, 0:2, 4:6] = (230, 25, 35)              # near red: snaps to red
    latents = mapping.encode(to_pixels(frames)).latent_dist.sample(torch.Generator().manual_seed(0))[0]
    assert latents.shape == (8, 3, 2, 3)
    red, blue = COLOR_CHANNELS.index("red"), COLOR_CHANNELS.index("blue")
    expected_red = np.zeros((3, 2, 3))
    expected_red[0, 0, 0] = 8.0 / 4                  # one red pixel of four
    expected_red[2, 0, 2] = 8.0
    expected_blue = np.zeros((3, 2, 3))
    expected_blue[1, 1, 1] = 8.0
    np.testing.assert_array_equal(latents[red].numpy(), expected_red)
    np.testing.assert_array_equal(latents[blue].numpy(), expected_blue)
    np.testing.assert_array_equal(latents[OCCUPANCY_CHANNEL].numpy(), expected_red + expected_blue)
    np.testing.assert_array_equal(latents[CLOCK_CHANNEL].numpy(), np.arange(3)[:, None, None] * np.full((2, 3), 3.0))


def test_latent_mapping_decodes_cells_over_their_spans_and_rejects_bad_shapes():
    mapping = PlantedLatentMapping(spatial_compression=2, temporal_compression=4)
    frames = np.zeros((5, 4, 4, 3), dtype=np.uint8)
    frames[:, 0:2, 2:4] = COLORS["green"]
    decoded = mapping.decode(mapping.encode(to_pixels(frames)).latent_dist.mode()).sample
    np.testing.assert_allclose(((decoded[0].permute(1, 2, 3, 0) + 1) * 127.5).numpy(), frames, atol=1e-3)
    with pytest.raises(ValueError, match=r"needs 4\*n \+ 1 frames, got 6"):
        mapping.encode(to_pixels(np.zeros((6, 4, 4, 3), dtype=np.uint8)))
    with pytest.raises(ValueError, match="multiples of 2 pixels, got 5x4"):
        mapping.encode(to_pixels(np.zeros((5, 5, 4, 3), dtype=np.uint8)))


@pytest.mark.parametrize("family", planted_families())
def test_planted_clip_squares_sit_on_the_token_grid(family):
    design = planted_pipeline(family).vidinterp_planted
    clip = planted_clip(design)
    masks = planted_token_masks(clip, design)
    rows, columns = design.token_grid
    for frame in range(design.token_frames):
        red = np.zeros((rows, columns), dtype=bool)
        red[1:3, 1 + frame: 3 + frame] = True        # one cell right per latent frame
        blue = np.zeros((rows, columns), dtype=bool)
        blue[rows - 3: rows - 1, columns - 3: columns - 1] = True
        np.testing.assert_array_equal(masks["red"][frame], red)
        np.testing.assert_array_equal(masks["blue"][frame], blue)


def test_pixel_maps_follow_the_spans_and_cells():
    maps = xr.DataArray(
        np.arange(2 * 3 * 2 * 3, dtype=float).reshape(2, 3, 2, 3), dims=("concept", "frame", "y", "x"),
        coords={"concept": ["a", "b"], "pixel_frame_first": ("frame", [0, 1, 5]), "pixel_frame_last": ("frame", [0, 4, 8]),
                "y_pixel": ("y", [4.0, 12.0]), "x_pixel": ("x", [4.0, 12.0, 20.0])},
    )
    assert pixel_frame_index(maps).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    pixels = pixel_maps(maps)
    assert pixels.dims == ("concept", "pixel_frame", "pixel_y", "pixel_x") and pixels.shape == (2, 9, 16, 24)
    for t, frame in enumerate([0, 1, 1, 1, 1, 2, 2, 2, 2]):
        for y in range(16):
            for x in range(24):
                assert pixels.values[1, t, y, x] == maps.values[1, frame, y // 8, x // 8]
    with pytest.raises(ValueError, match="pixel frames \\[9\\] lie in no token frame"):
        pixel_frame_index(maps, num_frames=10)
    with pytest.raises(ValueError, match="needs dims"):
        pixel_maps(maps.transpose("frame", "concept", "y", "x"))


class AttentionRecorder(Analysis):
    """Keeps the whole-sequence queries and keys of one layer (conditional rows) and the slice
    of its visual tokens."""

    name, group = "attention_recorder", "diagnostics"
    requires = (("q", "all"), ("k", "all"))
    site_kinds = ("joint", "self")

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def reset(self) -> None:
        self.seen = None

    def update(self, visit) -> None:
        if visit.layer == self.layer:
            self.seen = (visit.get("q", "all")[0], visit.get("k", "all")[0], visit.parts["q"]["visual"], visit.layout)

    def result(self) -> xr.Dataset:
        return xr.Dataset()


def attention(pipe, layer: int) -> tuple[torch.Tensor, slice, object]:
    """``[heads, tokens, tokens]`` attention of ``layer`` on the planted clip (dense: tiny)."""
    recorder = AttentionRecorder(layer)
    planted_trace(pipe, analyses=[recorder])
    query, key, visual, layout = recorder.seen
    return torch.softmax(query.float() @ key.float().transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1), visual, layout


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_motion_head_attends_to_the_same_place_in_the_previous_frame(family):
    pipe = planted_pipeline(family)
    layer, head = pipe.vidinterp_planted.motion
    weights, visual, layout = attention(pipe, layer)
    per_frame = layout.tokens_per_frame
    visual_weights = weights[head, visual, visual]  # [P, P]
    for token in range(per_frame, layout.visual_tokens):
        assert visual_weights[token, token - per_frame] > 0.9, f"query {token}"


@pytest.mark.parametrize("family", planted_families())
def test_uniform_and_identity_layers(family):
    pipe = planted_pipeline(family)
    design = pipe.vidinterp_planted
    uniform, _, _ = attention(pipe, design.uniform_layer)
    torch.testing.assert_close(uniform, torch.full_like(uniform, 1 / uniform.shape[-1]))
    identity, visual, _ = attention(pipe, design.identity_layer)
    assert (identity[:, visual, visual].diagonal(dim1=-2, dim2=-1) > 0.9).all()
