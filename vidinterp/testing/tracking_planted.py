"""A planted CogVideoX whose cross-frame attention matches a textured patch across frames, and
the clip it is made for: the known answer of temporal correspondence and point tracking.

The pipeline is the real ``CogVideoXPipeline`` / ``CogVideoXTransformer3DModel`` (rotary, as
CogVideoX-5B) with every weight written by hand following :mod:`vidinterp.testing.planted`
(ballast, mirrored features, rotary pairs that turn or not), the
:class:`~vidinterp.testing.latent.PlantedLatentMapping` as VAE and a layer-free T5.

Geometry: 13 frames of 48x64 pixels; 4x spatial and temporal compression and patch 2, so a
token covers 8x8 pixels: 4 token frames of 6x8 tokens. 3 blocks of 2 heads of 64 channels;
every residual update is gated off, so each block reads the patch embedding:

==========  ====================================================================================
block 0     uniform: q = k = 0 in both heads
block 1     the correspondence layer. Head 0: q = k = *appearance* (the share of each of the six
            palette colours, in the three rotary pairs that turn the least over the grid, logit
            ``appearance_logit`` for two tokens of one colour) + *position* (a visual token
            matches its own row and column, through the turning rotary pairs, worst gap
            ``POSITION_LOGIT``). ``appearance_logit`` exceeds the whole range of the positional
            scores by ``APPEARANCE_MARGIN``, so a coloured token's best key in any frame is the
            token of its colour, and a background token (no colour) keeps its position.
            Head 1: uniform.
block 2     position only (both heads): every token keeps its row and column, wrong for the patch
==========  ====================================================================================

:func:`tracking_clip` is a 2x3-cell patch whose cells are the six palette colours, on black,
translated by :data:`OFFSETS` token cells per token frame (held over each token frame's pixel
frames), so its cells' true matches and tracks are known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vidinterp.datasets.shapes import COLORS
from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import rotary_angles
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["TrackingDesign", "tracking_pipeline", "tracking_clip", "TrackingClip", "OFFSETS"]

HEADS, HEAD_DIM, TEXT_DIM, TEXT_LENGTH = 2, 64, 32, 16
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (13, 48, 64)
SPATIAL, TEMPORAL, PATCH = 4, 4, 2
CELL = SPATIAL * PATCH
UNIFORM, CORRESPONDENCE, POSITIONAL = 0, 1, 2
#: ``(dy, dx)`` token cells the patch is moved by in each token frame, from token frame 0
OFFSETS: tuple[tuple[int, int], ...] = ((0, 0), (2, 3), (1, 4), (3, 1))
#: top-left token cell of the patch in token frame 0, and its size in cells
PATCH_ORIGIN, PATCH_SHAPE = (1, 1), (2, 3)
APPEARANCE_MARGIN = 12.0
QK_BALLAST = 1000.0

RESIDUAL = weights.ResidualStream(WIDTH)
BALLAST, VISUAL, TEXT = 0, 2, 4
#: residual channel of each palette colour's share
COLOUR_CHANNELS: dict[str, int] = {colour: 6 + 2 * i for i, colour in enumerate(COLORS)}


@dataclass(frozen=True)
class TrackingDesign:
    """What the planted tracking pipeline was built to give.

    Attributes:
        uniform_layer, correspondence_layer, positional_layer: the blocks (see the module
            docstring); the correspondence is head 0 of ``correspondence_layer``.
        geometry: ``(frames, height, width)`` pixels; token_cell: pixels per token side.
        temporal_compression: pixel frames per latent frame.
        appearance_logit: the logit of two tokens of one colour in the correspondence head.
        num_inference_steps, step: the schedule and the (late) step to read.
    """

    uniform_layer: int
    correspondence_layer: int
    positional_layer: int
    geometry: tuple[int, int, int]
    token_cell: int
    temporal_compression: int
    appearance_logit: float
    num_inference_steps: int = 50
    step: int = 49

    @property
    def token_frames(self) -> int:
        return (self.geometry[0] - 1) // self.temporal_compression + 1

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.geometry[1] // self.token_cell, self.geometry[2] // self.token_cell


@dataclass(frozen=True)
class TrackingClip:
    """The planted clip and its answers.

    Attributes:
        frames: ``uint8 [T, H, W, 3]``.
        cells: ``int [6, 2]`` ``(row, column)`` of each patch cell in token frame 0.
        tracks: ``float [6, T, 2]`` ``(x, y)`` centre of each patch cell at every pixel frame
            (:mod:`vidinterp.tracking`'s convention: cell ``x`` has its centre at ``(x + 0.5) *
            cell``).
        truth: ``float [F, h, w, 2]`` true ``(y, x)`` cell in each token frame of every cell of
            token frame 0: the patch moves, the background stays, NaN where the patch covers
            background.
        token_frame: ``int [T]`` the token frame of each pixel frame.
    """

    frames: np.ndarray
    cells: np.ndarray
    tracks: np.ndarray
    truth: np.ndarray
    token_frame: np.ndarray


def tracking_clip(design: TrackingDesign) -> TrackingClip:
    """The textured patch translated by :data:`OFFSETS` (see the module docstring)."""
    frames, height, width = design.geometry
    rows, columns = design.token_grid
    cell, k = design.token_cell, design.temporal_compression
    token_frame = np.array([0] + [(t - 1) // k + 1 for t in range(1, frames)])
    colours = list(COLORS)
    cells = np.array([(PATCH_ORIGIN[0] + r, PATCH_ORIGIN[1] + c) for r in range(PATCH_SHAPE[0]) for c in range(PATCH_SHAPE[1])])
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    tracks = np.zeros((len(cells), frames, 2))
    for t in range(frames):
        dy, dx = OFFSETS[token_frame[t]]
        for index, (r, c) in enumerate(cells):
            y, x = r + dy, c + dx
            video[t, y * cell:(y + 1) * cell, x * cell:(x + 1) * cell] = COLORS[colours[index]]
            tracks[index, t] = ((x + 0.5) * cell, (y + 0.5) * cell)
    truth = np.zeros((design.token_frames, rows, columns, 2))
    truth[..., 0] = np.arange(rows)[:, None]
    truth[..., 1] = np.arange(columns)[None, :]
    for f, (dy, dx) in enumerate(OFFSETS[: design.token_frames]):
        for r, c in cells:
            truth[f, r + dy, c + dx] = np.nan  # background covered by the patch in frame f
        for r, c in cells:
            truth[f, r, c] = (r + dy, c + dx)
    return TrackingClip(frames=video, cells=cells, tracks=tracks, truth=truth, token_frame=token_frame)


def _pair_turn(angles: torch.Tensor) -> torch.Tensor:
    """``[pairs]``: the largest ``1 - cos`` of any token's angle against token 0's, per pair."""
    return (1 - torch.cos(angles - angles[:1])).max(dim=0).values


def tracking_pipeline():
    """The planted tracking pipeline (module docstring); its :class:`TrackingDesign` is
    ``pipe.vidinterp_tracking``."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    frames, height, width = GEOMETRY
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, time_embed_dim=16, text_embed_dim=TEXT_DIM, num_layers=3,
        sample_width=width // SPATIAL, sample_height=height // SPATIAL, sample_frames=frames, patch_size=PATCH,
        temporal_compression_ratio=TEMPORAL, max_text_seq_length=TEXT_LENGTH, use_rotary_positional_embeddings=True,
    ).eval()
    tokenizer = word_tokenizer()
    text_encoder = weights.layer_free_t5(tokenizer, TEXT_DIM, {}, 0)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
    token_frames = (frames - 1) // TEMPORAL + 1
    grid_shape = (token_frames, height // CELL, width // CELL)
    angles = rotary_angles(*pipe._prepare_rotary_positional_embeddings(height, width, token_frames, torch.device("cpu")))
    grid = weights.RotaryGrid(angles, grid_shape)
    with torch.no_grad():
        logit = _plant(transformer, grid)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_tracking = TrackingDesign(
        uniform_layer=UNIFORM, correspondence_layer=CORRESPONDENCE, positional_layer=POSITIONAL, geometry=GEOMETRY,
        token_cell=CELL, temporal_compression=TEMPORAL, appearance_logit=logit)
    return pipe


def _plant(transformer, grid: weights.RotaryGrid) -> float:
    """Write every weight; returns the appearance logit."""
    for name, parameter in transformer.named_parameters():
        parameter.zero_()
        if name.endswith(("norm.weight", "norm_final.weight")):
            parameter.fill_(1.0)
    embed = transformer.patch_embed
    weights.embed_colour_shares(embed.proj.weight, COLOUR_CHANNELS)
    weights.mirror(embed.proj.bias, BALLAST, RESIDUAL.ballast)
    weights.mirror(embed.proj.bias, VISUAL, 1.0)
    weights.mirror(embed.text_proj.bias, BALLAST, RESIDUAL.ballast)
    weights.mirror(embed.text_proj.bias, TEXT, 1.0)

    slow = torch.argsort(_pair_turn(grid.angles)).tolist()  # pairs, least turning first
    appearance_pairs, ballast_pair = slow[:3], slow[3]
    ballast = weights.HeadBallast(HEAD_DIM, channel=2 * ballast_pair, value=QK_BALLAST)
    appearance_channels = [channel for pair in appearance_pairs for channel in (2 * pair, 2 * pair + 1)]
    positional_pairs = grid.turning_pairs(reserved=(*ballast.channels, *appearance_channels))
    position = weights.positional_match(grid, positional_pairs, frames_back=0, logit=weights.POSITION_LOGIT,
                                        head_dim=HEAD_DIM, reading=RESIDUAL.reading(VISUAL))
    # the whole range of the positional logits over the grid (pre-rotary q = k = (g, 0) per pair)
    gain_squared = float(position.query[2 * positional_pairs[0]].abs().max() / RESIDUAL.reading(VISUAL).abs().max()) ** 2
    cosines = torch.cos(grid.angles[:, None, positional_pairs] - grid.angles[None, :, positional_pairs]).sum(-1)
    spread = float(cosines.max() - cosines.min()) * gain_squared / HEAD_DIM**0.5
    logit = spread + APPEARANCE_MARGIN
    appearance = sum(weights.match(HEAD_DIM, channel, RESIDUAL.reading(COLOUR_CHANNELS[colour]), logit)
                     for channel, colour in zip(appearance_channels, COLORS))
    programs = {
        (CORRESPONDENCE, 0): weights.QueryKey.same(appearance) + position,
        (POSITIONAL, 0): position,
        (POSITIONAL, 1): position,
    }
    blocks = transformer.transformer_blocks
    for (layer, head), qk in programs.items():
        _plant_head(blocks[layer].attn1, head, qk, ballast)
    for block in blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            norm.weight.copy_(ballast.norm_weight())
    return logit


def _plant_head(attn, head: int, qk: weights.QueryKey, ballast: weights.HeadBallast) -> None:
    """q/k rows of ``qk`` plus the ballast, whose first row also holds minus the sum of the
    other rows so the head vector's mean is exactly zero (the q/k LayerNorm then only divides
    by the ballast-dominated spread, which its weight undoes); v = 0."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear, weight in ((attn.to_q, qk.query), (attn.to_k, qk.key)):
        weight = weight.clone()
        weight[ballast.channel] = -weight.sum(dim=0)
        linear.weight[rows] = weight
        linear.bias[rows] = ballast.bias()
