"""Planted HunyuanVideo: ``HunyuanVideoPipeline`` and ``HunyuanVideoTransformer3DModel`` with hand-set weights.

Geometry: 9 frames at 48x64 pixels (multiples of the pipeline's 16); the latent mapping
compresses 4x in space and time and the patch is 2, so a token covers 8x8 pixels: 3 token frames
of 6x8 tokens. 4 double-stream blocks of 4 heads of 32 channels (width 128) and no single-stream
block (the class allows none; the double-stream blocks carry vidinterp's concept stream).
Rotary positions on visual tokens (theta 256 as HunyuanVideo, axes 8 / 12 / 12 channels). Prompt
slots: the pipeline's 256 (``max_sequence_length``), padded slots masked as keys. The scheduler
is flow matching with shift 1, so the renoise step 49 of 50 is at sigma 0.02.

Blocks (every adaptive-norm modulation is zero: no shift, no scale, and zero gates, so the
visual and the prompt residual streams stay the input embeddings through every block):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head
block 1     head 1 localises ``red`` and ``blue``: q = k = (red-ness, blue-ness) of a token, the
            visual and the text tokens alike; v = the visual red-ness and blue-ness
block 2     head 2 is the motion head: a visual query at token frame f matches the key at its own
            row and column in frame f - 1 (through rotary); v = the latent clock
block 3     identity: every head matches each visual query with its own key (through rotary)
==========  ====================================================================================

Each planted head writes the same program into the visual projections (``to_q`` / ``to_k`` /
``to_v``) and the prompt projections (``add_q_proj`` / ``add_k_proj`` / ``add_v_proj``, which
also project the concept stream): visual tokens fill only the visual channels and text tokens
only the text channels, so each stream reads what the head's program reads from it.

Residual channels (each feature ``f`` written as the mirrored pair ``(+f, -f)``, so the
non-affine LayerNorms of the blocks subtract nothing and only divide by the ballast-dominated
spread): ``0/1`` ballast ``+-B``, ``2/3`` visual indicator, ``4/5`` text indicator, ``6/7``
visual red-ness (share of the token's pixels that are red), ``8/9`` visual blue-ness, ``10/11``
text red-ness (1 for the word "red"), ``12/13`` text blue-ness, ``14/15`` clock / 16.

Head channels (``head_dim`` 32; rotary pairs ``(2m, 2m+1)``: 0-7 time, 8-19 rows, 20-31
columns, each axis from its fastest (1 rad per step) to its slowest frequency): ``6/7`` (the
slowest time pair) hold the ballast ``+-B`` of the q/k RMS norms (visual and prompt), whose
weight is zero there; the localising head puts red-ness in ``18/19`` and blue-ness in ``30/31``
(the slowest row and column pairs: rotary turns them by less than 0.07 rad on the native grid);
the text tokens of the motion and identity heads meet each other in the sink pair ``4/5``; the
motion and identity heads use the pairs that turn by more than 0.2 rad per step (time pairs 0-1,
row pairs 4-5, column pairs 10-11).

Text path. The tokenizer is the adapter's offline Llama-3-style one (the pipeline's template
prefix is exactly its ``crop_start`` of 95 tokens). The Llama text encoder has two layers, because the pipeline reads the hidden state
three from the end, which for two layers is the token embedding: each planted word (``red`` and
``" red"``, ``blue`` and ``" blue"``, as the template and the prompt spell them) embeds as one
unit direction, every other token as zero; the layers are zero and never read. The token refiner
(``context_embedder``) projects the embedding into the residual channels with ``proj_in``; its
one refiner block is gated off. The CLIP text encoder has no layer and zero weights (its pooled
output, like the timestep and guidance embeddings, only reaches the zeroed modulations).
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

__all__ = ["planted_hunyuan_video"]

HEADS, HEAD_DIM, TEXT_DIM, POOLED_DIM = 4, 32, 32, 16
WIDTH = HEADS * HEAD_DIM
ROPE_AXES = (8, 12, 12)  # head channels of the time, row and column rotary axes
GEOMETRY = (9, 48, 64)
SPATIAL, TEMPORAL, PATCH = 4, 4, 2
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2
#: flow-matching shift: sigma = 0.02 at the renoise step 49 of 50 (the unshifted schedule)
SCHEDULER_SHIFT = 1.0

# residual channels
BALLAST, VISUAL, TEXT, RED_V, BLUE_V, RED_T, BLUE_T, CLOCK = 0, 2, 4, 6, 8, 10, 12, 14
RESIDUAL_BALLAST = 32.0
#: the residual LayerNorm's spread: every token is dominated by the ballast, sqrt(2 B^2 / WIDTH)
RESIDUAL_SPREAD = (2 * RESIDUAL_BALLAST**2 / WIDTH) ** 0.5
CLOCK_SCALE = 1 / 16
# head channels
HEAD_BALLAST, SINK_PAIR, RED_PAIR, BLUE_PAIR = 6, 4, 18, 30
HEAD_BALLAST_VALUE = 100.0
#: the q/k RMS norm's scale, dominated by the ballast: sqrt(2 B^2 / HEAD_DIM)
HEAD_SPREAD = (2 * HEAD_BALLAST_VALUE**2 / HEAD_DIM) ** 0.5
# Llama embedding channels
LLAMA_RED, LLAMA_BLUE = 0, 1


def _mirror(weight: torch.Tensor, channel: int, values: torch.Tensor) -> None:
    """Write ``values`` to row ``channel`` and ``-values`` to row ``channel + 1``."""
    weight[channel] = values
    weight[channel + 1] = -values


def _design() -> PlantedDesign:
    return PlantedDesign(
        family="hunyuan_video", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH, temporal_compression=TEMPORAL,
    )


@register_planted("hunyuan_video")
def planted_hunyuan_video(variant: str = "t2v"):
    """Planted HunyuanVideo pipeline (see the module docstring). ``variant``: ``"t2v"``
    (text-to-video, guidance-distilled)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    from vidinterp.adapters.hunyuan_video import _tiny_llama_tokenizer

    if variant != "t2v":
        raise ValueError(f"unknown planted HunyuanVideo variant {variant!r}; expected 't2v'")
    frames, height, width = GEOMETRY
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM, num_layers=4, num_single_layers=0, num_refiner_layers=1, mlp_ratio=1.0,
        patch_size=PATCH, patch_size_t=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        rope_axes_dim=ROPE_AXES,
    ).eval()
    transformer.register_to_config(native_geometry=GEOMETRY)  # the adapter's default geometry
    tokenizer = _tiny_llama_tokenizer(HunyuanVideoPipeline)
    tokenizer_2 = word_tokenizer(model_max_length=77)
    pipe = HunyuanVideoPipeline(
        text_encoder=_llama(tokenizer), tokenizer=tokenizer, transformer=transformer,
        vae=PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT), text_encoder_2=_clip(tokenizer_2),
        tokenizer_2=tokenizer_2,
    )
    latents = torch.zeros(1, LATENT_CHANNELS, (frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL)
    angles = rotary_angles(*transformer.rope(latents))
    with torch.no_grad():
        _plant(transformer, angles)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = _design()
    return pipe


def _llama(tokenizer):
    """A two-layer Llama whose hidden state three from the end (the one the pipeline reads) is
    the token embedding: ``red`` / ``" red"`` and ``blue`` / ``" blue"`` are unit directions,
    every other token zero; the layers are zero."""
    from transformers import LlamaConfig, LlamaModel

    encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.zero_()
        for word, channel in (("red", LLAMA_RED), ("blue", LLAMA_BLUE)):
            for spelling in (word, " " + word):
                encoder.embed_tokens.weight[tokenizer.convert_tokens_to_ids(spelling), channel] = 1.0
    return encoder


def _clip(tokenizer):
    """A layer-free CLIP text encoder with zero weights: the pooled embedding is zero."""
    from transformers import CLIPTextConfig, CLIPTextModel

    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=POOLED_DIM, intermediate_size=POOLED_DIM, num_hidden_layers=0,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.zero_()
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
    the native geometry, from :func:`~vidinterp.testing.planted.rotary_angles`). Every weight
    not named below is zero: modulations, gates, the refiner block, the MLPs, the output
    projections and the final projection."""
    for parameter in transformer.parameters():
        parameter.zero_()

    # visual tokens: latent patch [channels, 1, 2, 2] -> residual features (share of the patch)
    proj = transformer.x_embedder.proj.weight  # [WIDTH, LATENT_CHANNELS, 1, PATCH, PATCH]
    patch_mean = torch.full((1, PATCH, PATCH), 1.0 / PATCH**2)
    amplitude = PlantedLatentMapping().config.amplitude
    for channel, latent, scale in ((RED_V, COLOR_CHANNELS.index("red"), 1 / amplitude),
                                   (BLUE_V, COLOR_CHANNELS.index("blue"), 1 / amplitude),
                                   (CLOCK, CLOCK_CHANNEL, CLOCK_SCALE)):
        proj[channel, latent], proj[channel + 1, latent] = patch_mean * scale, -patch_mean * scale
    _mirror(transformer.x_embedder.proj.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))
    _mirror(transformer.x_embedder.proj.bias, VISUAL, torch.tensor(1.0))
    # text tokens: the Llama embedding (a unit direction per planted word) -> residual features
    text = transformer.context_embedder.proj_in
    for channel, llama in ((RED_T, LLAMA_RED), (BLUE_T, LLAMA_BLUE)):
        _mirror(text.weight, channel, torch.nn.functional.one_hot(torch.tensor(llama), TEXT_DIM).float())
    _mirror(text.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))
    _mirror(text.bias, TEXT, torch.tensor(1.0))

    rows, columns = _design().token_grid
    token = lambda frame, row, column: (frame * rows + row) * columns + column  # noqa: E731
    origin = angles[token(0, 0, 0)]
    steps = torch.stack([angles[token(1, 0, 0)] - origin, angles[token(0, 1, 0)] - origin,
                         angles[token(0, 0, 1)] - origin])  # [axis, pair]: turn per step along t, y, x
    turning = [m for m in range(HEAD_DIM // 2) if float(torch.sin(steps[:, m] / 2).abs().max()) > TURNING
               and 2 * m not in (HEAD_BALLAST, RED_PAIR, BLUE_PAIR, SINK_PAIR)]
    itself = torch.zeros(HEAD_DIM // 2)
    previous = offset_phases(angles, token(1, 2, 3), token(0, 2, 3))

    blocks = transformer.transformer_blocks
    localising = _static(RED_PAIR, _reading(RED_V, RED_T), LOCALISING_LOGIT)
    localising += _static(BLUE_PAIR, _reading(BLUE_V, BLUE_T), LOCALISING_LOGIT)
    _plant_head(blocks[LOCALISING].attn, LOCALISING_HEAD,
                query=localising + _positional(turning, itself, SELF_LOGIT, key=False),
                key=localising + _positional(turning, itself, SELF_LOGIT, key=True),
                value={0: _reading(RED_V), 1: _reading(BLUE_V)})
    sink = _static(SINK_PAIR, _reading(TEXT), SINK_LOGIT)
    _plant_head(blocks[MOTION].attn, MOTION_HEAD,
                query=sink + _positional(turning, previous, POSITION_LOGIT, key=False),
                key=sink + _positional(turning, previous, POSITION_LOGIT, key=True),
                value={0: _reading(CLOCK)})
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn, head, query=sink + _positional(turning, itself, POSITION_LOGIT, key=False),
                    key=sink + _positional(turning, itself, POSITION_LOGIT, key=True), value={})
    for block in blocks:
        attn = block.attn
        for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
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
    cos 1)`` less (each axis has a pair turning 1 rad per step), which is ``logit`` after the
    ``1 / sqrt(head_dim)`` scale."""
    gain = (logit * HEAD_DIM**0.5 / (1 - math.cos(1.0))) ** 0.5
    rows = torch.zeros(HEAD_DIM, WIDTH)
    for m in pairs:
        phase = float(phases[m]) if key else 0.0
        rows[2 * m] = gain * math.cos(phase) * _reading(VISUAL)
        rows[2 * m + 1] = gain * math.sin(phase) * _reading(VISUAL)
    return rows


def _plant_head(attn, head: int, *, query: torch.Tensor, key: torch.Tensor, value: dict[int, torch.Tensor]) -> None:
    """Write one head into the visual and the prompt projections alike: q/k rows ``[HEAD_DIM,
    WIDTH]`` plus the ballast ``+-B`` in the slowest time pair (so the q/k RMS norm divides by
    the nearly constant :data:`HEAD_SPREAD`, which its weight undoes), and value rows
    ``{channel: reading}``."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear, program in ((attn.to_q, query), (attn.add_q_proj, query), (attn.to_k, key), (attn.add_k_proj, key)):
        linear.weight[rows] = program
        linear.bias[rows][HEAD_BALLAST] = HEAD_BALLAST_VALUE
        linear.bias[rows][HEAD_BALLAST + 1] = -HEAD_BALLAST_VALUE
    for linear in (attn.to_v, attn.add_v_proj):
        for channel, reading in value.items():
            linear.weight[head * HEAD_DIM + channel] = VALUE_GAIN * reading


#: softmax logits (after the 1 / sqrt(head_dim) scale): two fully red tokens; a token and
#: itself in the localising head; the gap between the target key and one a step off in the
#: motion and identity heads; two text tokens in those heads
LOCALISING_LOGIT, SELF_LOGIT, POSITION_LOGIT, SINK_LOGIT = 12.0, 8.0, 6.0, 8.0
#: value of a fully red token in the localising head, of a clock of 1 in the motion head
VALUE_GAIN = 4.0
TURNING = 0.1  # |sin(step / 2)| above which a rotary pair counts as positional
