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
turns them by less than 0.01 rad on the native grid); the motion and identity heads use the
pairs that turn by more than 0.1 rad per step.

Text encoder: a ``T5EncoderModel`` with no layers: each word's embedding is one unit direction
(``red``, ``blue``, everything else) and T5's final RMS norm keeps it.
"""

from __future__ import annotations

import math
from typing import Any

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

__all__ = ["planted_cogvideox"]

HEADS, HEAD_DIM, TEXT_DIM, TEXT_LENGTH = 4, 32, 32, 16
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (9, 48, 64)
SPATIAL, TEMPORAL, PATCH = 4, 4, 2
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2

# residual channels
BALLAST, VISUAL, TEXT, RED_V, BLUE_V, RED_T, BLUE_T, CLOCK = 0, 2, 4, 6, 8, 10, 12, 14
RESIDUAL_BALLAST = 32.0
#: the residual LayerNorm's spread: every token is dominated by the ballast, sqrt(2 B^2 / WIDTH)
RESIDUAL_SPREAD = (2 * RESIDUAL_BALLAST**2 / WIDTH) ** 0.5
CLOCK_SCALE = 1 / 16
# head channels
HEAD_BALLAST, SINK_PAIR, RED_PAIR, BLUE_PAIR = 6, 4, 18, 30
HEAD_BALLAST_VALUE = 100.0
#: the q/k LayerNorm's spread, dominated by the ballast: sqrt(2 B^2 / HEAD_DIM)
HEAD_SPREAD = (2 * HEAD_BALLAST_VALUE**2 / HEAD_DIM) ** 0.5
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


def _mirror(weight: torch.Tensor, channel: int, values: torch.Tensor) -> None:
    """Write ``values`` to row ``channel`` and ``-values`` to row ``channel + 1``."""
    weight[channel] = values
    weight[channel + 1] = -values


def _design() -> PlantedDesign:
    return PlantedDesign(
        family="cogvideox", variant="5b", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH, temporal_compression=TEMPORAL,
    )


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
    text_encoder = _text_encoder(tokenizer)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction")
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
    angles = rotary_angles(*pipe._prepare_rotary_positional_embeddings(height, width, (frames - 1) // TEMPORAL + 1,
                                                                       torch.device("cpu")))
    with torch.no_grad():
        _plant(transformer, angles)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = _design()
    return pipe


def _text_encoder(tokenizer):
    """A layer-free T5 whose word embeddings are unit directions: ``red``, ``blue``, other."""
    from transformers import T5Config, T5EncoderModel

    encoder = T5EncoderModel(T5Config(
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
    """A ``[WIDTH]`` row reading the sum of the given mirrored residual features from the block's
    LayerNorm output: ``(y_c - y_{c+1}) / 2`` cancels the norm's mean exactly, and the factor
    :data:`RESIDUAL_SPREAD` undoes its division, so a feature of value 1 reads as 1."""
    row = torch.zeros(WIDTH)
    for channel in channels:
        row[channel] += RESIDUAL_SPREAD / 2
        row[channel + 1] -= RESIDUAL_SPREAD / 2
    return row


def _plant(transformer, angles: torch.Tensor) -> None:
    """Write every weight of ``transformer`` (``angles``: rotary angles ``[tokens, pairs]`` of
    the native geometry, from :func:`~vidinterp.testing.planted.rotary_angles`)."""
    for name, parameter in transformer.named_parameters():
        parameter.zero_()
        if name.endswith(("norm.weight", "norm_q.weight", "norm_k.weight", "norm_final.weight")):
            parameter.fill_(1.0)

    embed = transformer.patch_embed
    # visual tokens: latent patch [channels, 2, 2] -> residual features (share of the patch)
    proj = embed.proj.weight  # [WIDTH, LATENT_CHANNELS, PATCH, PATCH]
    patch_mean = torch.full((PATCH, PATCH), 1.0 / PATCH**2)
    amplitude = PlantedLatentMapping().config.amplitude
    for channel, latent, scale in ((RED_V, COLOR_CHANNELS.index("red"), 1 / amplitude),
                                   (BLUE_V, COLOR_CHANNELS.index("blue"), 1 / amplitude),
                                   (CLOCK, CLOCK_CHANNEL, CLOCK_SCALE)):
        proj[channel, latent], proj[channel + 1, latent] = patch_mean * scale, -patch_mean * scale
    _mirror(embed.proj.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))
    _mirror(embed.proj.bias, VISUAL, torch.tensor(1.0))
    # text tokens: T5's RMS norm turns a unit direction into sqrt(TEXT_DIM) times it
    text = embed.text_proj.weight  # [WIDTH, TEXT_DIM]
    for channel, t5 in ((RED_T, T5_RED), (BLUE_T, T5_BLUE)):
        _mirror(text, channel, torch.nn.functional.one_hot(torch.tensor(t5), TEXT_DIM).float() * TEXT_DIM**-0.5)
    _mirror(embed.text_proj.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))
    _mirror(embed.text_proj.bias, TEXT, torch.tensor(1.0))

    frames, rows, columns = (GEOMETRY[0] - 1) // TEMPORAL + 1, GEOMETRY[1] // (SPATIAL * PATCH), GEOMETRY[2] // (SPATIAL * PATCH)
    token = lambda frame, row, column: (frame * rows + row) * columns + column  # noqa: E731
    steps = torch.stack([angles[token(1, 0, 0)] - angles[token(0, 0, 0)], angles[token(0, 1, 0)] - angles[token(0, 0, 0)],
                         angles[token(0, 0, 1)] - angles[token(0, 0, 0)]])
    turning = [m for m in range(HEAD_DIM // 2) if float(torch.sin(steps[:, m] / 2).abs().max()) > TURNING
               and 2 * m not in (HEAD_BALLAST, RED_PAIR, BLUE_PAIR, SINK_PAIR)]
    itself = torch.zeros(HEAD_DIM // 2)
    previous = offset_phases(angles, token(1, 2, 3), token(0, 2, 3))

    blocks = transformer.transformer_blocks
    localising = _static(RED_PAIR, _reading(RED_V, RED_T), LOCALISING_LOGIT)
    localising += _static(BLUE_PAIR, _reading(BLUE_V, BLUE_T), LOCALISING_LOGIT)
    _plant_head(blocks[LOCALISING].attn1, LOCALISING_HEAD,
                query=localising + _positional(turning, itself, SELF_LOGIT, key=False),
                key=localising + _positional(turning, itself, SELF_LOGIT, key=True),
                value={0: _reading(RED_V), 1: _reading(BLUE_V)})
    sink = _static(SINK_PAIR, _reading(TEXT), SINK_LOGIT)
    _plant_head(blocks[MOTION].attn1, MOTION_HEAD,
                query=sink + _positional(turning, previous, POSITION_LOGIT, key=False),
                key=sink + _positional(turning, previous, POSITION_LOGIT, key=True),
                value={0: _reading(CLOCK)})
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn1, head, query=sink + _positional(turning, itself, POSITION_LOGIT, key=False),
                    key=sink + _positional(turning, itself, POSITION_LOGIT, key=True), value={})
    for block in blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            norm.weight.fill_(HEAD_SPREAD)
            norm.weight[HEAD_BALLAST] = norm.weight[HEAD_BALLAST + 1] = 0.0


def _static(pair: int, reading: torch.Tensor, logit: float) -> torch.Tensor:
    """q or k rows ``[HEAD_DIM, WIDTH]`` putting the mirrored feature ``(g f, -g f)`` in the
    channel pair starting at ``pair``: two tokens whose features are 1 score ``logit`` (after
    the ``1 / sqrt(head_dim)`` scale)."""
    gain = (logit * HEAD_DIM**0.5 / 2) ** 0.5
    rows = torch.zeros(HEAD_DIM, WIDTH)
    rows[pair], rows[pair + 1] = gain * reading, -gain * reading
    return rows


def _positional(pairs: list[int], phases: torch.Tensor, logit: float, *, key: bool) -> torch.Tensor:
    """q or k rows of a positional match for visual tokens (read from the visual indicator):
    q = g (1, 0) and k = g (cos delta_m, sin delta_m) in every pair ``m`` of ``pairs``. After
    rotary, query ``i`` scores key ``j`` ``g^2 sum_m cos(phi_m(i) - phi_m(j) - delta_m)``, largest
    where ``phi(j) = phi(i) - delta``; a key one step off in an axis scores at least ``g^2 (1 -
    cos 1)`` less, which is ``logit`` after the ``1 / sqrt(head_dim)`` scale."""
    gain = (logit * HEAD_DIM**0.5 / (1 - math.cos(1.0))) ** 0.5
    rows = torch.zeros(HEAD_DIM, WIDTH)
    for m in pairs:
        phase = float(phases[m]) if key else 0.0
        rows[2 * m] = gain * math.cos(phase) * _reading(VISUAL)
        rows[2 * m + 1] = gain * math.sin(phase) * _reading(VISUAL)
    return rows


def _plant_head(attn, head: int, *, query: torch.Tensor, key: torch.Tensor, value: dict[int, torch.Tensor]) -> None:
    """Write one head: q/k rows ``[HEAD_DIM, WIDTH]`` plus the ballast ``+-B`` in the slowest
    time pair (its first row also holds minus the sum of the other rows, so the head vector's
    mean is exactly zero and the q/k LayerNorm only divides by the ballast-dominated spread
    :data:`HEAD_SPREAD`, which its weight undoes), and value rows ``{channel: reading}``."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear, program in ((attn.to_q, query), (attn.to_k, key)):
        program = program.clone()
        program[HEAD_BALLAST] = -program.sum(dim=0)
        linear.weight[rows] = program
        linear.bias[rows][HEAD_BALLAST] = HEAD_BALLAST_VALUE
        linear.bias[rows][HEAD_BALLAST + 1] = -HEAD_BALLAST_VALUE
    for channel, reading in value.items():
        attn.to_v.weight[head * HEAD_DIM + channel] = VALUE_GAIN * reading


#: softmax logits (after the 1 / sqrt(head_dim) scale): two fully red tokens; a token and
#: itself in the localising head; the gap between the target key and one a step off in the
#: motion and identity heads; two text tokens in those heads
LOCALISING_LOGIT, SELF_LOGIT, POSITION_LOGIT, SINK_LOGIT = 12.0, 8.0, 6.0, 8.0
#: value of a fully red token in the localising head, of a clock of 1 in the motion head
VALUE_GAIN = 4.0
TURNING = 0.1  # |sin(step / 2)| above which a rotary pair counts as positional
