"""Planted LTX-Video: ``LTXPipeline`` and ``LTXVideoTransformer3DModel`` with hand-set weights.

Geometry: 9 frames at 64x64 pixels (multiples of the pipelines' 32); the latent mapping
compresses 8x in space and 4x in time and the patch is 1, so a token covers 8x8 pixels: 3 token
frames of 8x8 tokens. 4 blocks of 4 heads of 32 channels (width 128). Every block has two sites:
``blocks.{l}.attn`` (``attn1``, self-attention of the visual tokens, 3-D rotary across all heads,
each head with its own frequencies) and ``blocks.{l}.cross_attn`` (``attn2``: visual queries,
prompt keys and values, no rotary). Prompts keep the pipeline's 128 slots; the model masks the
slots after the prompt's end token.

As on Wan (:mod:`vidinterp.testing.planted_wan`, whose design this follows), there is no concept
stream: a concept is a word of the prompt, so the localising head and the clock head (whose
outputs separate frames; vidinterp's separation scores read the cross sites) are cross heads.

Blocks (the blocks' ``scale_shift_table`` and the time embedding are zero: no shift, no scale,
zero gates; ``attn2``'s output projection, which LTX adds to the residual without a gate, is zero
too; so the residual stream stays the input embedding through every block):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head of both sites
block 1     cross head 1 localises ``red`` and ``blue``: a visual query holds its red-ness and
            blue-ness and matches the key of the word "red" / "blue"; every visual query also
            matches the keys of the other words of the prompt (the sink, value zero), so a
            background query's output is nearly zero and a red query's output is the red
            direction
block 2     self head 2 is the motion head: a visual query at token frame f matches the key at
            its own row and column in frame f - 1 (through rotary; frame 0 falls back on its own
            position); v = the latent clock. Cross head 2 is the clock head: a visual query's
            clock *lowers* its match with the other words (value: one direction), so its output,
            their share of the mass, falls with the frame index (0.8, 0.5, 0.2 in frames 0, 1, 2
            with the design prompt's 8 other tokens and 2 planted words): the head whose outputs
            separate frames
block 3     identity: every self head matches each visual query with its own key (through
            rotary)
==========  ====================================================================================

Residual channels (visual tokens only; each feature ``f`` written as the mirrored pair
``(+f, -f)``): ``0/1`` ballast ``+-B`` (the non-affine RMS norm before ``attn1`` divides by a
ballast-dominated spread), ``2/3`` red-ness (share of the token's pixels that are red), ``4/5``
blue-ness, ``6/7`` clock (the latent frame index). ``attn2``'s queries read the residual stream
itself (LTX does not normalise it there), so their rows read ``(f - (-f)) / 2``.

Text stream (the output of the transformer's ``caption_projection``): ``0`` the word "red",
``1`` the word "blue", ``2`` any other token (1 for such a token, else 0); the padding slots are
"other" tokens too, but the model masks them.

Head channels (``head_dim`` 32). LTX's q/k norm is one RMSNorm across all heads: channel ``31``
of every head holds the ballast ``B`` in the q and k biases, the norm's weight is zero there and
undoes the ballast-dominated RMS everywhere else. Cross sites (no rotary): ``0`` red, ``1`` blue,
``2`` sink, ``3`` clock. Self sites hold visual tokens only, so the motion and identity heads' q
and k are constant before rotary and live in the biases, in every rotary pair of the head but the
ballast's; their gain makes the worst gap between the target key and any other key
:data:`POSITION_LOGIT` on the native grid. LTX scales its rotary positions for grids of
thousands of pixels and gives each head its own frequencies, so on this grid head 0's pairs
turn by at most 0.08 rad per row or column and its gain is large (about 150); ``B = 1e4`` keeps
the norm's divisor within 0.1% of the ballast's even then.

VAE: :class:`PlantedLTXLatentMapping`, the planted latent mapping with the attributes the LTX
pipelines read (``latents_mean`` / ``latents_std`` tensors, ``decode(z, temb)``, no timestep
conditioning). Text encoder: a ``T5EncoderModel`` with no layers (each word's embedding is one
unit direction: ``red``, ``blue``, everything else). Scheduler: flow matching with shift 1 and no
dynamic shifting, so the late renoise step (49 of 50) leaves ``sigma = 0.02`` of noise.
"""

from __future__ import annotations

import inspect
import math

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import CLOCK_CHANNEL, LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["planted_ltx", "PlantedLTXLatentMapping"]

HEADS, HEAD_DIM, TEXT_DIM = 4, 32, 32
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (9, 64, 64)
SPATIAL, TEMPORAL = 8, 4
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2

# residual channels
BALLAST, RED_V, BLUE_V, CLOCK = 0, 2, 4, 6
RESIDUAL = weights.ResidualStream(WIDTH)
# text-stream channels
RED_T, BLUE_T, WORD_T = 0, 1, 2
# head channels; LTX's q/k RMSNorm spans all heads, one unmirrored ballast per head
RED_SLOT, BLUE_SLOT, SINK_SLOT, CLOCK_SLOT = 0, 1, 2, 3
QK_BALLAST = weights.HeadBallast(HEAD_DIM, channel=31, value=1e4, mirrored=False)
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2
#: softmax logits: a fully red token and the word "red" in the cross localising head, which also
#: meets the sink; the fall of a non-planted word's logit per frame of clock in the clock head
#: (ln 4: the other words' mass goes 0.8, 0.5, 0.2 over 3 frames); the worst gap between the
#: target key and any other key in the motion and identity heads
LOCALISING_LOGIT, CLOCK_LOGIT, POSITION_LOGIT = 16.0, math.log(4.0), 8.0


class PlantedLTXLatentMapping(PlantedLatentMapping):
    """:class:`~vidinterp.testing.latent.PlantedLatentMapping` as the LTX pipelines read a VAE:
    ``latents_mean`` / ``latents_std`` as tensors (``AutoencoderKLLTXVideo`` keeps them as
    buffers), and ``decode(z, temb)`` with a timestep it ignores."""

    @property
    def latents_mean(self) -> torch.Tensor:
        return torch.tensor(self.config.latents_mean)

    @property
    def latents_std(self) -> torch.Tensor:
        return torch.tensor(self.config.latents_std)

    def decode(self, z: torch.Tensor, temb: torch.Tensor | None = None, return_dict: bool = True):
        return super().decode(z, return_dict=return_dict)


@register_planted("ltx")
def planted_ltx(variant: str = "t2v"):
    """Planted LTX-Video pipeline (see the module docstring). ``variant``: ``"t2v"``
    (``LTXPipeline``, text-to-video)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    if variant != "t2v":
        raise ValueError(f"unknown planted LTX variant {variant!r}; expected 't2v'")
    transformer = LTXVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM, cross_attention_dim=WIDTH, num_layers=4, caption_channels=TEXT_DIM,
    ).eval()
    transformer.register_to_config(native_geometry=GEOMETRY)
    tokenizer = word_tokenizer()
    text_encoder = weights.layer_free_t5(tokenizer, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER)
    vae = PlantedLTXLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    vae.register_to_config(timestep_conditioning=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                       transformer=transformer)
    design = PlantedDesign(
        family="ltx", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL, temporal_compression=TEMPORAL,
    )
    # the rotary table of the native grid at the pipeline's scale (its default frame rate)
    frame_rate = inspect.signature(LTXPipeline.__call__).parameters["frame_rate"].default
    frames, rows, columns = design.token_frames, *design.token_grid
    cos, sin = transformer.rope(torch.zeros(1, 1), frames, rows, columns, (TEMPORAL / frame_rate, SPATIAL, SPATIAL))
    grids = [weights.RotaryGrid(rotary_angles(cos[0, :, channels], sin[0, :, channels]), (frames, rows, columns))
             for channels in (slice(head * HEAD_DIM, (head + 1) * HEAD_DIM) for head in range(HEADS))]
    with torch.no_grad():
        _plant(transformer, grids)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _word(channel: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading one text-stream channel (0 or 1 for every prompt slot)."""
    return weights.unit(WIDTH, channel)


def _raw(channel: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading the mirrored feature at ``channel`` from the un-normalised
    residual stream (``attn2``'s query input)."""
    return (weights.unit(WIDTH, channel) - weights.unit(WIDTH, channel + 1)) / 2


def _plant(transformer, grids: list[weights.RotaryGrid]) -> None:
    """Write every weight of ``transformer`` (``grids``: each head's rotary angles of the native
    visual tokens)."""
    for parameter in transformer.parameters():
        parameter.zero_()
    _plant_embeddings(transformer)

    blocks = transformer.transformer_blocks
    colours = ((RED_SLOT, RED_V, RED_T), (BLUE_SLOT, BLUE_V, BLUE_T))
    colour_queries = sum(weights.match(HEAD_DIM, slot, _raw(visual), LOCALISING_LOGIT) for slot, visual, _ in colours)
    word_keys = sum(weights.match(HEAD_DIM, slot, _word(text), LOCALISING_LOGIT) for slot, _, text in colours)
    # every visual query also meets the other words of the prompt (the sink)
    sink_query = weights.match(HEAD_DIM, SINK_SLOT, weights.CONSTANT, weights.SINK_LOGIT)
    sink_key = weights.match(HEAD_DIM, SINK_SLOT, _word(WORD_T), weights.SINK_LOGIT)
    weights.write_head(blocks[LOCALISING].attn2, LOCALISING_HEAD, query=colour_queries, query_bias=sink_query,
                key=word_keys + sink_key, value={0: _word(RED_T), 1: _word(BLUE_T)})
    weights.write_head(blocks[MOTION].attn1, MOTION_HEAD, value={0: RESIDUAL.reading(CLOCK)},
                **_positional(grids[MOTION_HEAD], frames_back=1))
    weights.write_head(blocks[MOTION].attn2, MOTION_HEAD,
                query=-weights.match(HEAD_DIM, CLOCK_SLOT, _raw(CLOCK), CLOCK_LOGIT),
                key=weights.match(HEAD_DIM, CLOCK_SLOT, _word(WORD_T), CLOCK_LOGIT), value={0: _word(WORD_T)})
    for head in range(HEADS):
        weights.write_head(blocks[IDENTITY].attn1, head, value={}, **_positional(grids[head], frames_back=0))
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            weights.add_ballast_across_heads(attn, QK_BALLAST)


def _positional(grid: weights.RotaryGrid, frames_back: int) -> dict[str, torch.Tensor]:
    """q and k biases matching each visual query with the key at its own row and column
    ``frames_back`` frames earlier, in every rotary pair of the head but the ballast's."""
    pairs = [pair for pair in range(HEAD_DIM // 2) if 2 * pair not in QK_BALLAST.channels
             and 2 * pair + 1 not in QK_BALLAST.channels]
    match = weights.positional_match(grid, pairs, frames_back=frames_back, logit=POSITION_LOGIT,
                                     head_dim=HEAD_DIM, reading=weights.CONSTANT)
    return {"query_bias": match.query, "key_bias": match.key}


def _plant_embeddings(transformer) -> None:
    """Patch embedding (``proj_in``: a latent cell's channels -> mirrored residual features:
    the share of the cell that is red / blue, the latent frame index, the ballast) and text
    projection (each text-stream channel exactly 0 or 1: :func:`~vidinterp.testing.weights.unit_text_projection`)."""
    embed = transformer.proj_in
    weights.embed_colour_shares(embed.weight, {"red": RED_V, "blue": BLUE_V})
    weights.embed_latent_mean(embed.weight, CLOCK, CLOCK_CHANNEL, 1 / PlantedLatentMapping().config.clock_step)
    weights.mirror(embed.bias, BALLAST, RESIDUAL.ballast)

    weights.unit_text_projection(transformer.caption_projection, {RED_T: T5_RED, BLUE_T: T5_BLUE, WORD_T: T5_OTHER},
                                 TEXT_DIM)
