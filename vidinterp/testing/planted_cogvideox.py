"""Planted CogVideoX: ``CogVideoXPipeline`` and ``CogVideoXTransformer3DModel`` with hand-set weights.

Geometry: 9 frames at 48x64 pixels; the latent mapping compresses 4x in space and time and the
patch is 2, so a token covers 8x8 pixels: 3 token frames of 6x8 tokens. 4 blocks of 4 heads of
32 channels (width 128), rotary positions on visual tokens (as CogVideoX-5B). Prompt slots: 16.

Blocks (every adaptive-norm modulation is zero: no shift, no scale, and zero gates, so the
residual stream stays the input embedding through every block):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head
block 1     head 1 localises ``red`` and ``blue``: q = k = (red-ness, blue-ness) of a token, the
            visual and the text halves alike; v = the visual red-ness and blue-ness
block 2     head 2 is the motion head: a visual query at token frame f matches the key at its own
            row and column in frame f - 1 (through rotary); v = the latent clock
block 3     identity: every head matches each visual query with its own key (through rotary)
==========  ====================================================================================

Residual channels (each feature ``f`` written as the mirrored pair ``(+f, -f)``):
``0/1`` ballast ``+-B``, ``2/3`` visual indicator, ``4/5`` text indicator, ``6/7`` visual
red-ness (share of the token's pixels that are red), ``8/9`` visual blue-ness, ``10/11`` text
red-ness (1 for the word "red"), ``12/13`` text blue-ness, ``14/15`` clock / 16.

Head channels (``head_dim`` 32; rotary pairs ``(2m, 2m+1)``: 0-7 time, 8-19 rows, 20-31
columns, each axis from its fastest to its slowest frequency): ``6/7`` (the slowest time pair)
hold the ballast ``+-B`` of the q/k LayerNorm, whose weight is zero there; the localising head
puts red-ness in ``18/19`` and blue-ness in ``30/31`` (the slowest row and column pairs: rotary
turns them by less than 0.01 rad on the native grid); the text tokens of the motion and identity
heads meet each other in the sink pair ``4/5``; the motion and identity heads use the pairs that
turn by more than :data:`~vidinterp.testing.weights.TURNING` rad per step (time pair 0, row pairs
4-5, column pairs 10-11), with the gain that makes the worst gap between the target key and any
other visual key :data:`~vidinterp.testing.weights.POSITION_LOGIT` on the native grid.

Text encoder: a ``T5EncoderModel`` with no layers: each word's embedding is one unit direction
(``red``, ``blue``, everything else) and T5's final RMS norm keeps it.
"""

from __future__ import annotations

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["planted_cogvideox"]

HEADS, HEAD_DIM, TEXT_DIM, TEXT_LENGTH = 4, 32, 32, 16
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (9, 48, 64)
SPATIAL, TEMPORAL, PATCH = 4, 4, 2
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2

#: residual and head channels (see the module docstring)
LAYOUT = weights.JointVideoLayout(
    residual=weights.ResidualStream(WIDTH), ballast=0, visual=2, text=4, clock=14,
    words={"red": (6, 10, 18), "blue": (8, 12, 30)},  # (visual feature, text feature, head pair)
    sink_pair=4, qk_ballast=weights.HeadBallast(HEAD_DIM, channel=6),
)
CLOCK_SCALE = 1 / 16
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


@register_planted("cogvideox")
def planted_cogvideox(variant: str = "5b"):
    """Planted CogVideoX pipeline (see the module docstring). ``variant``: ``"5b"`` (rotary)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    if variant != "5b":
        raise ValueError(f"unknown planted CogVideoX variant {variant!r}; expected '5b'")
    frames, height, width = GEOMETRY
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, time_embed_dim=16, text_embed_dim=TEXT_DIM, num_layers=4,
        sample_width=width // SPATIAL, sample_height=height // SPATIAL, sample_frames=frames, patch_size=PATCH,
        temporal_compression_ratio=TEMPORAL, max_text_seq_length=TEXT_LENGTH, use_rotary_positional_embeddings=True,
    ).eval()
    tokenizer = word_tokenizer()
    text_encoder = weights.layer_free_t5(tokenizer, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
    design = PlantedDesign(
        family="cogvideox", variant="5b", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH, temporal_compression=TEMPORAL,
    )
    angles = rotary_angles(*pipe._prepare_rotary_positional_embeddings(height, width, design.token_frames,
                                                                       torch.device("cpu")))
    with torch.no_grad():
        _plant(transformer, design, weights.RotaryGrid(angles, (design.token_frames, *design.token_grid)))
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _plant(transformer, design: PlantedDesign, grid: weights.RotaryGrid) -> None:
    """Write every weight of ``transformer`` (``grid``: the rotary angles of the native visual
    tokens). Every weight not named below is zero, except the LayerNorm weights, which are 1."""
    for name, parameter in transformer.named_parameters():
        parameter.zero_()
        if name.endswith(("norm.weight", "norm_final.weight")):
            parameter.fill_(1.0)
    embed = transformer.patch_embed
    LAYOUT.embed_visual(embed.proj.weight, embed.proj.bias, CLOCK_SCALE)  # weight [WIDTH, LATENT_CHANNELS, 2, 2]
    # T5's RMS norm turns a unit direction into sqrt(TEXT_DIM) times it
    LAYOUT.embed_text(embed.text_proj.weight, embed.text_proj.bias, {"red": T5_RED, "blue": T5_BLUE}, TEXT_DIM**-0.5)
    blocks = transformer.transformer_blocks
    for (layer, head), program in LAYOUT.head_programs(design, HEADS, grid).items():
        _plant_head(blocks[layer].attn1, head, program)
    for block in blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            norm.weight.copy_(LAYOUT.qk_ballast.norm_weight())


def _plant_head(attn, head: int, program: weights.HeadProgram) -> None:
    """Write one head: the q/k rows of ``program`` plus the q/k ballast, whose first row also
    holds minus the sum of the other rows, so the head vector's mean is exactly zero and the q/k
    LayerNorm only divides by the ballast-dominated spread, which its weight undoes; and the v
    rows of ``program``."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    ballast = LAYOUT.qk_ballast
    for linear, weight in ((attn.to_q, program.qk.query), (attn.to_k, program.qk.key)):
        weight = weight.clone()
        weight[ballast.channel] = -weight.sum(dim=0)
        linear.weight[rows] = weight
        linear.bias[rows] = ballast.bias()
    attn.to_v.weight[rows] = weights.value_rows(HEAD_DIM, WIDTH, program.value)
