"""Declarative geometry: every rule of :class:`vidinterp.geometry.Geometry` against explicit
answers (token grids, frame spans, and the messages that name the expected values)."""

from __future__ import annotations

import pytest

from vidinterp.geometry import Geometry

VIDEO = Geometry(model="Video", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2)


def test_tokens_and_spans_of_a_causal_video_model():
    assert VIDEO.token_cell == 8 and VIDEO.size_multiple == 8
    assert VIDEO.tokens(9, 32, 48) == (3, 4, 6)
    assert VIDEO.frame_spans(9) == ((0, 0), (1, 4), (5, 8))
    assert VIDEO.tokens(13, 16, 64) == (4, 2, 8)


def test_temporal_patch_with_and_without_leading_padding():
    strict = Geometry(model="M", native=(13, 32, 48), temporal_compression=4, spatial_compression=4, patch=2,
                      temporal_patch=2)
    assert strict.tokens(13, 32, 48) == (2, 4, 6) and strict.frame_spans(13) == ((0, 4), (5, 12))
    with pytest.raises(ValueError, match=r"divisible by the temporal patch 2 \(e\.g\. 13\), got 9 -> 3 latent frames"):
        strict.check(9, 32, 48)
    padded = Geometry(model="M", native=(17, 32, 48), temporal_compression=4, spatial_compression=4, patch=2,
                      temporal_patch=2, pad_latent_frames=True)
    assert padded.latent_frames(9) == (4, 1)  # 3 latent frames, one leading copy
    assert padded.tokens(9, 32, 48) == (2, 4, 6)
    assert padded.frame_spans(9) == ((0, 0), (1, 8))  # the padding frame stands for pixel frame 0


@pytest.mark.parametrize("geometry, size, message", [
    (VIDEO, (10, 32, 48), r"num_frames must be 4\*n \+ 1 \(e\.g\. 9\), got 10"),
    (VIDEO, (9, 36, 48), "height must be a positive multiple of 8 pixels, got 36"),
    (VIDEO, (9, 32, 0), "width must be a positive multiple of 8 pixels, got 0"),
    (Geometry(model="M", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2, pixel_multiple=16),
     (9, 40, 48), "height must be a positive multiple of 16 pixels, got 40"),
    (Geometry(model="M", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2, max_grid=6),
     (9, 32, 56), r"width must be at most 48 pixels \(6 tokens\), got 56"),
    (Geometry(model="M", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2, max_token_frames=2),
     (9, 32, 48), "num_frames gives 3 token frames, more than the model's 2"),
    (Geometry(model="M", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2, fixed_size=True),
     (9, 32, 40), r"width must be 48 \(learned positional embeddings\), got 40"),
    (Geometry(model="M", native=(9, 32, 48), temporal_compression=4, spatial_compression=4, patch=2,
              at_most_native_size=True), (9, 40, 48), "height must be at most 32"),
    (Geometry(model="Img", native=(1, 64, 64), temporal_compression=1, spatial_compression=8, patch=2, images=True),
     (2, 64, 64), r"num_frames must be 1 \(an image is a video of one frame\), got 2"),
])
def test_each_rule_names_what_is_expected(geometry, size, message):
    with pytest.raises(ValueError, match=message) as error:
        geometry.check(*size)
    assert f"this model's native geometry: {geometry.native[0]}" in str(error.value)
    assert str(error.value).startswith(f"invalid {'image' if geometry.images else 'video'} geometry for {geometry.model}")


def test_every_problem_is_listed_at_once():
    with pytest.raises(ValueError) as error:
        VIDEO.check(10, 36, 50)
    assert str(error.value).count(";") == 2
