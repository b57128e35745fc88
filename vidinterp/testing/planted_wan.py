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
are constant before rotary and live in the biases, in the pairs that turn by at least 0.1 rad
per step of their axis; their gain makes the worst gap between the target key and any other
key :data:`POSITION_LOGIT` on the native grid.

Text encoder: a ``UMT5EncoderModel`` with no layers: each word's embedding is one unit direction
(``red``, ``blue``, everything else) and UMT5's final RMS norm keeps it. Tokenizer: the word
tokenizer of :mod:`vidinterp.testing.tiny`. Scheduler: UniPC with flow sigmas and no shift, so
the late renoise step (49 of 50) leaves ``sigma = 0.02`` of noise.
"""

from __future__ import annotations

import math

import torch

from vidinterp.testing.latent import CLOCK_CHANNEL, COLOR_CHANNELS, LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import (
    PLANTED_WORDS,
    PlantedDesign,
    offset_phases,
    register_planted,
    rotary_angles,
)
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
RESIDUAL_BALLAST = 32.0
#: the residual LayerNorm's spread: every token is dominated by the ballast, sqrt(2 B^2 / WIDTH)
RESIDUAL_SPREAD = (2 * RESIDUAL_BALLAST**2 / WIDTH) ** 0.5
# text-stream channels
RED_T, BLUE_T, WORD_T = 0, 1, 2
# head channels
RED_SLOT, BLUE_SLOT, SINK_SLOT, CLOCK_SLOT = 0, 1, 2, 3
HEAD_BALLAST = 10
HEAD_BALLAST_VALUE = 1000.0
#: the q/k RMSNorm's RMS across the heads, dominated by one ballast per head: B / sqrt(head_dim)
HEAD_SPREAD = HEAD_BALLAST_VALUE / HEAD_DIM**0.5
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


def _mirror(weight: torch.Tensor, channel: int, values: torch.Tensor) -> None:
    """Write ``values`` to row ``channel`` and ``-values`` to row ``channel + 1``."""
    weight[channel] = values
    weight[channel + 1] = -values


def _design() -> PlantedDesign:
    return PlantedDesign(
        family="wan", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH[1], temporal_compression=TEMPORAL,
    )


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
    text_encoder = _text_encoder(tokenizer)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=1.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)
    frames, height, width = GEOMETRY
    latents = torch.zeros(1, LATENT_CHANNELS, (frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL)
    cos, sin = transformer.rope(latents)  # [1, tokens, 1, head_dim] each
    with torch.no_grad():
        _plant(transformer, rotary_angles(cos[0, :, 0], sin[0, :, 0]))
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = _design()
    return pipe


def _text_encoder(tokenizer):
    """A layer-free UMT5 whose word embeddings are unit directions: ``red``, ``blue``, other."""
    from transformers import UMT5Config, UMT5EncoderModel

    encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=TEXT_DIM, num_layers=0, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    with torch.no_grad():
        table = encoder.shared.weight
        table.zero_()
        table[:, T5_OTHER] = 1.0
        for word, channel in (("red", T5_RED), ("blue", T5_BLUE)):
            index = tokenizer.convert_tokens_to_ids(word)
            table[index] = 0.0
            table[index, channel] = 1.0
        encoder.encoder.final_layer_norm.weight.fill_(1.0)
    return encoder


def _reading(*channels: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading the sum of the given mirrored residual features from a block's
    LayerNorm output: ``(y_c - y_{c+1}) / 2`` cancels the norm's mean exactly, and the factor
    :data:`RESIDUAL_SPREAD` undoes its division, so a feature of value 1 reads as 1."""
    row = torch.zeros(WIDTH)
    for channel in channels:
        row[channel] += RESIDUAL_SPREAD / 2
        row[channel + 1] -= RESIDUAL_SPREAD / 2
    return row


def _word(channel: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading one text-stream channel (0 or 1 for every prompt slot)."""
    return torch.nn.functional.one_hot(torch.tensor(channel), WIDTH).float()


def _plant(transformer, angles: torch.Tensor) -> None:
    """Write every weight of ``transformer`` (``angles``: rotary angles ``[tokens, pairs]`` of
    the native geometry, from :func:`~vidinterp.testing.planted.rotary_angles`)."""
    for name, parameter in transformer.named_parameters():
        parameter.zero_()
        if name.endswith("norm2.weight"):  # the cross-attention LayerNorm: plain LayerNorm
            parameter.fill_(1.0)
    _plant_embeddings(transformer)

    rows, columns = _design().token_grid
    token = lambda frame, row, column: (frame * rows + row) * columns + column  # noqa: E731
    steps = torch.stack([angles[token(1, 0, 0)] - angles[token(0, 0, 0)], angles[token(0, 1, 0)] - angles[token(0, 0, 0)],
                         angles[token(0, 0, 1)] - angles[token(0, 0, 0)]])
    turning = [m for m in range(HEAD_DIM // 2) if float(steps[:, m].abs().max()) >= TURNING and 2 * m != HEAD_BALLAST]
    itself = torch.zeros(HEAD_DIM // 2)
    previous = offset_phases(angles, token(1, 2, 3), token(0, 2, 3))
    every_token = torch.arange(len(angles))
    one_frame_back = torch.where(every_token >= rows * columns, every_token - rows * columns, -1)

    blocks = transformer.blocks
    colours = ((RED_SLOT, RED_V, RED_T), (BLUE_SLOT, BLUE_V, BLUE_T))
    _plant_head(blocks[LOCALISING].attn2, LOCALISING_HEAD,
                query=sum(_match(slot, _reading(visual), LOCALISING_LOGIT) for slot, visual, _ in colours),
                query_bias=_constant(SINK_SLOT, SINK_LOGIT),
                key=sum(_match(slot, _word(word), LOCALISING_LOGIT) for slot, _, word in colours)
                + _match(SINK_SLOT, _word(WORD_T), SINK_LOGIT),
                value={0: _word(RED_T), 1: _word(BLUE_T)})
    gain = _position_gain(angles, turning, previous, one_frame_back)
    _plant_head(blocks[MOTION].attn1, MOTION_HEAD, query_bias=_positional(turning, itself, gain),
                key_bias=_positional(turning, previous, gain), value={0: _reading(CLOCK)})
    _plant_head(blocks[MOTION].attn2, MOTION_HEAD, query=_match(CLOCK_SLOT, _reading(CLOCK), CLOCK_LOGIT),
                key=_match(CLOCK_SLOT, _word(WORD_T), CLOCK_LOGIT), value={0: _word(WORD_T)})
    gain = _position_gain(angles, turning, itself, every_token)
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn1, head, query_bias=_positional(turning, itself, gain),
                    key_bias=_positional(turning, itself, gain), value={})
    for block in blocks:
        for attn in (block.attn1, block.attn2):
            _plant_ballast(attn)


def _plant_embeddings(transformer) -> None:
    """Patch embedding (latent patch ``[channels, 1, 2, 2]`` -> mirrored residual features:
    the share of the patch that is red / blue, the latent frame index, the ballast) and text
    projection (UMT5's RMS norm turns a unit direction into ``sqrt(TEXT_DIM)`` times it;
    ``linear_1`` brings it to 1, the tanh-GELU maps 1 to ``gelu(1)``, ``linear_2`` divides it
    back, so each text-stream channel is exactly 0 or 1)."""
    proj = transformer.patch_embedding.weight  # [WIDTH, LATENT_CHANNELS, 1, 2, 2]
    patch_mean = torch.full(PATCH, 1.0 / math.prod(PATCH))
    mapping = PlantedLatentMapping().config
    for channel, latent, scale in ((RED_V, COLOR_CHANNELS.index("red"), 1 / mapping.amplitude),
                                   (BLUE_V, COLOR_CHANNELS.index("blue"), 1 / mapping.amplitude),
                                   (CLOCK, CLOCK_CHANNEL, 1 / mapping.clock_step)):
        proj[channel, latent], proj[channel + 1, latent] = patch_mean * scale, -patch_mean * scale
    _mirror(transformer.patch_embedding.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))

    text = transformer.condition_embedder.text_embedder
    unit = 1 / torch.nn.functional.gelu(torch.tensor(1.0), approximate="tanh")
    for channel, t5 in ((RED_T, T5_RED), (BLUE_T, T5_BLUE), (WORD_T, T5_OTHER)):
        text.linear_1.weight[channel, t5] = TEXT_DIM**-0.5
        text.linear_2.weight[channel, channel] = unit


def _match(slot: int, reading: torch.Tensor, logit: float) -> torch.Tensor:
    """q or k rows ``[HEAD_DIM, len(reading)]`` putting ``g f`` in head channel ``slot``: a
    query and a key whose features are 1 score ``logit`` (after the ``1 / sqrt(head_dim)``
    scale). Only at cross sites, which have no rotary."""
    rows = torch.zeros(HEAD_DIM, len(reading))
    rows[slot] = (logit * HEAD_DIM**0.5) ** 0.5 * reading
    return rows


def _constant(slot: int, logit: float) -> torch.Tensor:
    """A q bias ``[HEAD_DIM]`` holding a feature of 1 in head channel ``slot`` for every query
    (every cross query is a visual token): it scores ``logit`` against a :func:`_match` key
    whose feature is 1."""
    return _match(slot, torch.ones(1), logit)[:, 0]


def _positional(pairs: list[int], phases: torch.Tensor, gain: float) -> torch.Tensor:
    """A q or k bias ``[HEAD_DIM]`` for a positional match: ``g (cos delta_m, sin delta_m)`` in
    every pair ``m`` of ``pairs`` (``delta = 0`` for queries). After rotary, query ``i`` scores
    key ``j`` ``g^2 sum_m cos(phi_m(i) - phi_m(j) - delta_m)``, largest where ``phi(j) = phi(i)
    - delta``."""
    bias = torch.zeros(HEAD_DIM)
    for m in pairs:
        bias[2 * m] = gain * math.cos(float(phases[m]))
        bias[2 * m + 1] = gain * math.sin(float(phases[m]))
    return bias


def _position_gain(angles: torch.Tensor, pairs: list[int], phases: torch.Tensor, targets: torch.Tensor) -> float:
    """The gain ``g`` of :func:`_positional` that makes the worst gap between a query's target
    key and any other key :data:`POSITION_LOGIT` (after the ``1 / sqrt(head_dim)`` scale), over
    the native grid. ``targets``: ``[tokens]`` target key of each query, ``-1`` for queries
    without one (the first frame, for the motion head)."""
    difference = angles[:, None, pairs] - angles[None, :, pairs] - phases[pairs].double()
    scores = torch.cos(difference).sum(dim=-1)  # [queries, keys], per unit g^2
    queries = (targets >= 0).nonzero().squeeze(1)
    best = scores[queries, targets[queries]]
    others = scores[queries].clone()
    others[torch.arange(len(queries)), targets[queries]] = -math.inf
    gap = float((best - others.max(dim=1).values).min())
    return (POSITION_LOGIT * HEAD_DIM**0.5 / gap) ** 0.5


def _plant_head(attn, head: int, *, query: torch.Tensor | None = None, query_bias: torch.Tensor | None = None,
                key: torch.Tensor | None = None, key_bias: torch.Tensor | None = None,
                value: dict[int, torch.Tensor]) -> None:
    """Write one head: q/k rows ``[HEAD_DIM, WIDTH]`` and biases ``[HEAD_DIM]`` (absent: zero),
    and value rows ``{channel: [WIDTH] reading}`` times :data:`VALUE_GAIN`. Queries read the
    block's LayerNorm output; keys and values read it at self sites and the text stream at
    cross sites."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear, weight, bias in ((attn.to_q, query, query_bias), (attn.to_k, key, key_bias)):
        if weight is not None:
            linear.weight[rows] = weight
        if bias is not None:
            linear.bias[rows] = bias
    for channel, reading in value.items():
        attn.to_v.weight[head * HEAD_DIM + channel] = VALUE_GAIN * reading


def _plant_ballast(attn) -> None:
    """Put the ballast ``B`` in channel :data:`HEAD_BALLAST` of every head's q and k bias, and
    set the q/k RMSNorm (one norm across all heads) to weight zero there and
    :data:`HEAD_SPREAD` elsewhere: the RMS is ``B / sqrt(head_dim)`` up to the planted signals'
    share (below 1e-3), so the norm leaves every planted channel unchanged."""
    for linear, norm in ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k)):
        norm.weight.fill_(HEAD_SPREAD)
        for head in range(HEADS):
            linear.bias[head * HEAD_DIM + HEAD_BALLAST] = HEAD_BALLAST_VALUE
            norm.weight[head * HEAD_DIM + HEAD_BALLAST] = 0.0


#: softmax logits (after the 1 / sqrt(head_dim) scale): a fully red token and the word "red";
#: any visual token and a non-planted word (the sink); a clock of one frame and a non-planted
#: word in the clock head; the worst gap between the target key and any other key in the
#: motion and identity heads
LOCALISING_LOGIT, SINK_LOGIT, CLOCK_LOGIT, POSITION_LOGIT = 16.0, 8.0, 3.0, 8.0
#: value of the word "red" in the localising head, of a clock of 1 in the motion head, of a
#: non-planted word in the clock head
VALUE_GAIN = 4.0
TURNING = 0.1  # rad per step of its axis above which a rotary pair counts as positional
