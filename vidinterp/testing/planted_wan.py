"""Planted Wan2.1: ``WanPipeline`` and ``WanTransformer3DModel`` with hand-set weights.

Geometry: 9 frames at 48x64 pixels; the latent mapping compresses 4x in space and time and the
patch is ``(1, 2, 2)``, so a token covers 8x8 pixels: 3 token frames of 6x8 tokens. 4 blocks of
4 heads of 32 channels (width 128). Every block has two sites: ``blocks.{l}.attn`` (``attn1``,
self-attention of the visual tokens, 3-D rotary) and ``blocks.{l}.cross_attn`` (``attn2``: visual
queries, prompt keys and values, no rotary). Prompts keep the pipeline's 512 slots; the slots
after the prompt's end token hold zero text embeddings, so their keys and values are zero.

Wan has no concept stream: a concept is a word of the prompt, and its key and value are that
word's prompt key and value at the cross sites. So the localising head is a *cross* head, and
so is the clock head: vidinterp's separation scores (and IMAP's head choice) read the cross
sites of Wan, where GramCol reads its outputs.

Blocks (the adaptive-norm table and the time projection are zero: no shift, no scale, zero
gates, and ``attn2``'s output projection, which Wan adds to the residual without a gate, is
zero too; so the residual stream stays the input embedding through every block):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head of both sites
block 1     cross head 1 localises ``red`` and ``blue``: a visual query holds its red-ness and
            blue-ness and matches the key of the word "red" / "blue"; every visual query also
            matches the keys of the other words of the prompt (the sink, value zero), so a
            background query's output is nearly zero (98% of its mass on the sink) and a red
            query's output is the red direction (99.7% of its mass on "red")
block 2     self head 2 is the motion head: a visual query at token frame f matches the key at
            its own row and column in frame f - 1 (through rotary; frame 0 falls back on its own
            position); v = the latent clock. Cross head 2 is the clock head: a visual query's
            clock raises its match with the other words, whose value is one direction, so its
            output grows with the frame index (mass on those words 0.02, 0.24, 0.86 in frames
            0, 1, 2): the head whose outputs separate frames
block 3     identity: every self head matches each visual query with its own key (through
            rotary)
==========  ====================================================================================

Residual channels (visual tokens only; each feature ``f`` written as the mirrored pair
``(+f, -f)``): ``0/1`` ballast ``+-B`` (the pre-attention LayerNorms divide by a
ballast-dominated spread), ``2/3`` red-ness (share of the token's pixels that are red), ``4/5``
blue-ness, ``6/7`` clock (the latent frame index).

Text stream (the output of the transformer's text projection): ``0`` the word "red", ``1`` the
word "blue", ``2`` any other word of the prompt, end token included (1 for such a word, else 0).
It is never normalised before ``to_k``/``to_v``.

Head channels (``head_dim`` 32; rotary pairs ``(2m, 2m+1)``: 0-11 time, 12-21 rows, 22-31
columns, each axis from its fastest to its slowest frequency). Wan's q/k norm is one RMSNorm
across all heads: channel ``10`` (the slowest time pair) of every head holds the ballast ``B``
in the q and k biases, the norm's weight is zero there and undoes the ballast-dominated RMS
everywhere else. Cross sites (no rotary): ``0`` red, ``1`` blue, ``2`` sink, ``3`` clock. Self
sites: Wan's self-attention holds visual tokens only, so the motion and identity heads' q and k
are constant before rotary and live in the biases, in the pairs that turn by more than
:data:`~vidinterp.testing.weights.TURNING` rad per step of their axis (time pairs 0-1, row pairs
6-7, column pairs 11-12); their gain makes the worst gap between the target key and any other
key :data:`POSITION_LOGIT` on the native grid.

Text encoder: a ``UMT5EncoderModel`` with no layers: each word's embedding is one unit direction
(``red``, ``blue``, everything else) and UMT5's final RMS norm keeps it. Tokenizer: the word
tokenizer of :mod:`vidinterp.testing.tiny`. Scheduler: UniPC with flow sigmas and no shift, so
the late renoise step (49 of 50) leaves ``sigma = 0.02`` of noise.
"""

from __future__ import annotations

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import CLOCK_CHANNEL, LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["planted_wan"]

HEADS, HEAD_DIM, TEXT_DIM = 4, 32, 32
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (9, 48, 64)
SPATIAL, TEMPORAL, PATCH = 4, 4, (1, 2, 2)
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2

# residual channels
BALLAST, RED_V, BLUE_V, CLOCK = 0, 2, 4, 6
RESIDUAL = weights.ResidualStream(WIDTH)
# text-stream channels
RED_T, BLUE_T, WORD_T = 0, 1, 2
# head channels; Wan's q/k RMSNorm spans all heads, one unmirrored ballast per head
RED_SLOT, BLUE_SLOT, SINK_SLOT, CLOCK_SLOT = 0, 1, 2, 3
QK_BALLAST = weights.HeadBallast(HEAD_DIM, channel=10, value=1000.0, mirrored=False)
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2
#: softmax logits of Wan's own heads (the sink's is the shared one): a fully red token and the
#: word "red" in the cross localising head, which also meets the sink; a clock of one frame and
#: a non-planted word in the clock head; the worst gap between the target key and any other key
#: in the motion and identity heads
LOCALISING_LOGIT, CLOCK_LOGIT, POSITION_LOGIT = 16.0, 3.0, 8.0


@register_planted("wan")
def planted_wan(variant: str = "t2v"):
    """Planted Wan2.1 pipeline (see the module docstring). ``variant``: ``"t2v"``
    (``WanPipeline``, text-to-video)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    if variant != "t2v":
        raise ValueError(f"unknown planted Wan variant {variant!r}; expected 't2v'")
    transformer = WanTransformer3DModel(
        patch_size=PATCH, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=4, rope_max_seq_len=32,
    ).eval()
    transformer.register_to_config(native_geometry=GEOMETRY)
    tokenizer = word_tokenizer()
    text_encoder = weights.layer_free_t5(tokenizer, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER, umt5=True)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=1.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    design = PlantedDesign(
        family="wan", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH[1], temporal_compression=TEMPORAL,
    )
    frames, height, width = GEOMETRY
    latents = torch.zeros(1, LATENT_CHANNELS, (frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL)
    cos, sin = transformer.rope(latents)  # [1, tokens, 1, head_dim] each
    grid = weights.RotaryGrid(rotary_angles(cos[0, :, 0], sin[0, :, 0]), (design.token_frames, *design.token_grid))
    with torch.no_grad():
        _plant(transformer, grid)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _word(channel: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading one text-stream channel (0 or 1 for every prompt slot)."""
    return weights.unit(WIDTH, channel)


def _plant(transformer, grid: weights.RotaryGrid) -> None:
    """Write every weight of ``transformer`` (``grid``: the rotary angles of the native visual
    tokens)."""
    for name, parameter in transformer.named_parameters():
        parameter.zero_()
        if name.endswith("norm2.weight"):  # the cross-attention LayerNorm: plain LayerNorm
            parameter.fill_(1.0)
    _plant_embeddings(transformer)

    blocks = transformer.blocks
    colours = ((RED_SLOT, RED_V, RED_T), (BLUE_SLOT, BLUE_V, BLUE_T))
    colour_queries = sum(weights.match(HEAD_DIM, slot, RESIDUAL.reading(visual), LOCALISING_LOGIT)
                         for slot, visual, _ in colours)
    word_keys = sum(weights.match(HEAD_DIM, slot, _word(text), LOCALISING_LOGIT) for slot, _, text in colours)
    # every visual query also meets the other words of the prompt (the sink)
    sink_query = weights.match(HEAD_DIM, SINK_SLOT, weights.CONSTANT, weights.SINK_LOGIT)
    sink_key = weights.match(HEAD_DIM, SINK_SLOT, _word(WORD_T), weights.SINK_LOGIT)
    weights.write_head(blocks[LOCALISING].attn2, LOCALISING_HEAD, query=colour_queries, query_bias=sink_query,
                key=word_keys + sink_key, value={0: _word(RED_T), 1: _word(BLUE_T)})
    turning = grid.turning_pairs(reserved=QK_BALLAST.channels)
    motion = weights.positional_match(grid, turning, frames_back=1, logit=POSITION_LOGIT, head_dim=HEAD_DIM,
                                      reading=weights.CONSTANT)
    weights.write_head(blocks[MOTION].attn1, MOTION_HEAD, query_bias=motion.query, key_bias=motion.key,
                value={0: RESIDUAL.reading(CLOCK)})
    weights.write_head(blocks[MOTION].attn2, MOTION_HEAD,
                query=weights.match(HEAD_DIM, CLOCK_SLOT, RESIDUAL.reading(CLOCK), CLOCK_LOGIT),
                key=weights.match(HEAD_DIM, CLOCK_SLOT, _word(WORD_T), CLOCK_LOGIT), value={0: _word(WORD_T)})
    identity = weights.positional_match(grid, turning, frames_back=0, logit=POSITION_LOGIT, head_dim=HEAD_DIM,
                                        reading=weights.CONSTANT)
    for head in range(HEADS):
        weights.write_head(blocks[IDENTITY].attn1, head, query_bias=identity.query, key_bias=identity.key, value={})
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            weights.add_ballast_across_heads(attn, QK_BALLAST)


def _plant_embeddings(transformer) -> None:
    """Patch embedding (latent patch ``[channels, 1, 2, 2]`` -> mirrored residual features:
    the share of the patch that is red / blue, the latent frame index, the ballast) and text
    projection (each text-stream channel exactly 0 or 1: :func:`~vidinterp.testing.weights.unit_text_projection`)."""
    embed = transformer.patch_embedding
    weights.embed_colour_shares(embed.weight, {"red": RED_V, "blue": BLUE_V})
    weights.embed_latent_mean(embed.weight, CLOCK, CLOCK_CHANNEL, 1 / PlantedLatentMapping().config.clock_step)
    weights.mirror(embed.bias, BALLAST, RESIDUAL.ballast)

    weights.unit_text_projection(transformer.condition_embedder.text_embedder,
                                 {RED_T: T5_RED, BLUE_T: T5_BLUE, WORD_T: T5_OTHER}, TEXT_DIM)
