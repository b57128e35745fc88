"""Planted Stable Diffusion 3: ``StableDiffusion3Pipeline`` and ``SD3Transformer2DModel`` with hand-set weights.

Geometry: one image (a video of one frame) at 64x64 pixels; the latent mapping compresses 4x in
space and the patch is 2, so a token covers 8x8 pixels: 8x8 visual tokens. 3 joint blocks of 4
heads of 32 channels (width 128), no q/k norm (SD3 "3"); the last block is ``context_pre_only``.
No rotary: the only position signal is the positional embedding that ``pos_embed`` (PatchEmbed)
adds to the visual tokens, and this design overwrites it (see "Positional code"). Prompt slots:
16 CLIP rows then 16 T5 rows.

Blocks (every adaptive-norm modulation is zero: the timestep and pooled-text embedders have zero
weights, so ``temb = 0``, every shift, scale and gate is zero and the residual streams stay the
input embeddings through every block; ``norm1``/``norm1_context`` are then plain LayerNorms):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head, visual and prompt streams alike
block 1     head 1 localises ``red`` and ``blue``: q = k = (red-ness, blue-ness) of a token, read by
            ``to_q``/``to_k`` from visual tokens and by ``add_q_proj``/``add_k_proj`` from prompt
            and concept tokens, plus a visual self-match (positional code) so that tokens of no
            planted colour attend to themselves; v = the visual red-ness and blue-ness
block 2     identity (``context_pre_only``): every head matches each visual query with its own
            key through the positional code; prompt and concept tokens attend among themselves
            (a constant "sink" channel from the ``add_{q,k}_proj`` biases); v = 0
==========  ====================================================================================

Residual channels (each feature ``f`` written as the mirrored pair ``(+f, -f)``); the visual and
prompt streams have their own projections (``to_*`` and ``add_*_proj``), so they share the channel
meanings: ``0/1`` ballast ``+-B``, ``2/3`` red-ness (visual: share of the token's pixels that are
red; prompt/concept: 1 for the word "red"), ``4/5`` blue-ness, ``6..37`` the positional code
(visual tokens only: 16 features, each as a mirrored pair).

Positional code: SD3's sincos table in ``pos_embed.pos_embed`` (``[1, M*M, width]`` for the
``M = pos_embed_max_size`` grid, centre-cropped to the image's grid) is replaced by a table that
is zero except in the positional channels: for the row and for the column of each position, and
for each frequency ``w`` in :data:`POSITION_FREQUENCIES`, ``(cos w r, sin w r)``. Two codes
dot to ``sum_w cos(w (r - r')) + sum_w cos(w (c - c'))``, largest (8) exactly at the same
position and at least :func:`_axis_gap` lower one step or more off in either axis, anywhere in
the ``M x M`` grid. The code's squared norm is the same at every position, so the LayerNorm's
spread stays ballast-dominated and equal for all visual tokens. The colour features sit in
channels the code leaves at zero.

Head channels (``head_dim`` 32, no q/k norm, so no head ballast): ``0`` red-ness, ``1``
blue-ness, ``2`` sink (prompt/concept tokens), ``16..31`` the positional code.

Text encoders (all built in code, tokenizers as the adapter's tiny pipeline builds them):

* CLIP-L and CLIP-G: ``CLIPTextModelWithProjection`` with one inert layer (zero weights: the
  layer returns its input) and zero position embeddings, so the penultimate hidden state the
  pipeline reads is the word embedding: a unit direction ``red`` (channel 0), ``blue`` (1) or
  other (2) of width 8. The final LayerNorm and projection are zero: the pooled embeddings are 0.
  The joint CLIP row is ``[CLIP-L | CLIP-G | 0]`` (width 32), so ``red`` is in channels 0 and 8.
* T5: a ``T5EncoderModel`` with no layers whose word embeddings are unit directions in channels
  16 (``red``), 17 (``blue``), 18 (other); T5's final RMS norm scales them by ``sqrt(32)``.

``context_embedder`` turns either kind of row into red-ness and blue-ness 1 for the planted words.

Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` as SD3's; the design's renoise step (49
of 50) has sigma 0.009, so the renoised clip keeps its colour fractions. ``proj_out`` is zero:
the predicted velocity is 0 (a generation returns its starting noise).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted
from vidinterp.testing.tiny import clip_word_tokenizer, word_tokenizer

__all__ = ["planted_sd3"]

HEADS, HEAD_DIM, LAYERS = 4, 32, 3
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (1, 64, 64)
SPATIAL, PATCH = 4, 2
#: positional-embedding grid (tokens per side) the transformer accepts (the native grid is 8x8)
POSITION_GRID = 16
UNIFORM, LOCALISING, IDENTITY = 0, 1, 2
LOCALISING_HEAD = 1
PROMPT = "a red square and a blue square"

# residual channels
BALLAST, RED, BLUE, POSITION = 0, 2, 4, 6
RESIDUAL = weights.ResidualStream(WIDTH)
# positional code: angular frequencies (radians per token) of each axis
POSITION_FREQUENCIES = (math.pi / 2, math.pi / 4, math.pi / 8, math.pi / 16)
POSITION_FEATURES = 2 * 2 * len(POSITION_FREQUENCIES)  # (row, column) x (cos, sin) x frequencies
# head channels
RED_HEAD, BLUE_HEAD, SINK_HEAD, POSITION_HEAD = 0, 1, 2, 16
# text encoder channels: CLIP (each of CLIP-L, CLIP-G) and T5
CLIP_DIM, TEXT_DIM, TEXT_LENGTH = 8, 32, 16
CLIP_RED, CLIP_BLUE, CLIP_OTHER = 0, 1, 2
T5_RED, T5_BLUE, T5_OTHER = 16, 17, 18


@register_planted("sd3")
def planted_sd3(variant: str = "3"):
    """Planted Stable Diffusion 3 pipeline (see the module docstring). ``variant``: ``"3"``
    (no q/k norm, no dual attention)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if variant != "3":
        raise ValueError(f"unknown planted SD3 variant {variant!r}; expected '3'")
    transformer = SD3Transformer2DModel(
        sample_size=GEOMETRY[1] // SPATIAL, patch_size=PATCH, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, num_layers=LAYERS, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
        joint_attention_dim=TEXT_DIM, caption_projection_dim=WIDTH, pooled_projection_dim=2 * CLIP_DIM,
        pos_embed_max_size=POSITION_GRID,
    ).eval()
    tokenizer, tokenizer_2 = clip_word_tokenizer(TEXT_LENGTH), clip_word_tokenizer(TEXT_LENGTH)
    tokenizer_3 = word_tokenizer(model_max_length=TEXT_LENGTH)
    with torch.no_grad():
        _plant(transformer)
        text_encoder, text_encoder_2 = _clip_encoder(tokenizer), _clip_encoder(tokenizer_2)
        # T5 rows: channels 16-18, clear of the CLIP rows' channels 0-15
        text_encoder_3 = weights.layer_free_t5(tokenizer_3, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=1).eval(),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = PlantedDesign(
        family="sd3", variant="3", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD), motion=None,
        uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY, token_cell=SPATIAL * PATCH,
        temporal_compression=1, prompt=PROMPT,
    )
    return pipe


# -------------------------------------------------------------------- text encoders
def _clip_encoder(tokenizer):
    """An inert one-layer ``CLIPTextModelWithProjection`` of width :data:`CLIP_DIM`: every
    weight is zero (the layer adds nothing to its input, the pooled output is 0) except the word
    embeddings, unit directions ``red``, ``blue``, other. SD3 reads the penultimate hidden state,
    which is then the word embedding itself."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    encoder = weights.zero_parameters(CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_DIM, intermediate_size=CLIP_DIM, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=CLIP_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval())
    weights.word_directions(encoder.text_model.embeddings.token_embedding.weight, tokenizer,
                    {"red": CLIP_RED, "blue": CLIP_BLUE}, CLIP_OTHER)
    return encoder


# -------------------------------------------------------------------- positional code
def _axis_code(size: int) -> torch.Tensor:
    """``[size, 2 * len(POSITION_FREQUENCIES)]``: ``(cos w i, sin w i)`` of each index ``i`` of
    one axis, for every frequency ``w`` of :data:`POSITION_FREQUENCIES` (radians per token)."""
    angles = torch.arange(size, dtype=torch.float64)[:, None] * torch.tensor(POSITION_FREQUENCIES, dtype=torch.float64)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _position_code(size: int) -> torch.Tensor:
    """``[size * size, POSITION_FEATURES]`` positional code of a ``size x size`` token grid
    (row-major): the row's axis code then the column's (:func:`_axis_code`)."""
    axis = _axis_code(size)
    rows = axis[:, None].expand(size, size, -1)
    columns = axis[None, :].expand(size, size, -1)
    return torch.cat([rows, columns], dim=-1).reshape(size * size, POSITION_FEATURES)


def _axis_gap(size: int) -> float:
    """Smallest drop of one axis' code dot product away from the same index, ``min over 0 < d <
    size of sum_w (1 - cos w d)``: two positions that differ in any axis score at least this much
    less than a position with itself."""
    code = _axis_code(size)
    dots = code @ code.T
    return float((dots.diagonal()[:, None] - dots).masked_fill(torch.eye(size, dtype=torch.bool), math.inf).min())


# -------------------------------------------------------------------- the transformer
def _plant(transformer) -> None:
    """Write every weight of ``transformer`` and its positional table (see the module docstring)."""
    weights.zero_parameters(transformer)
    _plant_embeddings(transformer)
    blocks = transformer.transformer_blocks
    colours = (weights.match(HEAD_DIM, RED_HEAD, RESIDUAL.reading(RED), weights.LOCALISING_LOGIT)
               + weights.match(HEAD_DIM, BLUE_HEAD, RESIDUAL.reading(BLUE), weights.LOCALISING_LOGIT))
    _plant_head(blocks[LOCALISING].attn, LOCALISING_HEAD, visual=colours + _positional(weights.SELF_LOGIT),
                prompt=colours, value={RED_HEAD: RESIDUAL.reading(RED), BLUE_HEAD: RESIDUAL.reading(BLUE)})
    # prompt and concept tokens attend among themselves: a constant in the sink channel
    sink = weights.match(HEAD_DIM, SINK_HEAD, weights.CONSTANT, weights.SINK_LOGIT)
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn, head, visual=_positional(weights.POSITION_LOGIT), prompt_bias=sink, value={})


def _plant_embeddings(transformer) -> None:
    """Visual tokens: latent patch ``[channels, 2, 2]`` -> red-ness and blue-ness (share of the
    patch), ballast from the bias, and the positional code in place of SD3's sincos table.
    Prompt and concept rows: ``context_embedder`` reads red-ness and blue-ness from the CLIP
    channels (mean of CLIP-L and CLIP-G) and the T5 channels, ballast from the bias."""
    embed = transformer.pos_embed
    proj = embed.proj.weight  # [WIDTH, LATENT_CHANNELS, PATCH, PATCH]
    weights.embed_colour_shares(proj, {"red": RED, "blue": BLUE})
    weights.mirror(embed.proj.bias, BALLAST, RESIDUAL.ballast)
    table = torch.zeros(POSITION_GRID**2, WIDTH)
    code = _position_code(POSITION_GRID).float()
    for feature in range(POSITION_FEATURES):
        weights.mirror(table.T, POSITION + 2 * feature, code[:, feature])
    embed.pos_embed.copy_(table.unsqueeze(0))

    text = transformer.context_embedder.weight  # [WIDTH, TEXT_DIM]
    for channel, clip, t5 in ((RED, CLIP_RED, T5_RED), (BLUE, CLIP_BLUE, T5_BLUE)):
        reading = torch.zeros(TEXT_DIM)
        reading[[clip, CLIP_DIM + clip]] = 0.5  # CLIP-L and CLIP-G side by side, each 1
        reading[t5] = TEXT_DIM**-0.5  # T5's RMS norm: sqrt(TEXT_DIM)
        weights.mirror(text, channel, reading)
    weights.mirror(transformer.context_embedder.bias, BALLAST, RESIDUAL.ballast)


def _positional(logit: float) -> torch.Tensor:
    """q = k rows ``[HEAD_DIM, WIDTH]`` of a visual self-match: ``g`` times the positional code in
    head channels :data:`POSITION_HEAD` onwards. A visual query scores itself ``8 g^2 /
    sqrt(head_dim)`` and every other visual key at least ``logit`` less (:func:`_axis_gap`)."""
    gain = (logit * HEAD_DIM**0.5 / _axis_gap(POSITION_GRID)) ** 0.5
    rows = torch.zeros(HEAD_DIM, WIDTH)
    for feature in range(POSITION_FEATURES):
        rows[POSITION_HEAD + feature] = gain * RESIDUAL.reading(POSITION + 2 * feature)
    return rows


def _plant_head(attn: nn.Module, head: int, *, visual: torch.Tensor, value: dict[int, torch.Tensor],
                prompt: torch.Tensor | None = None, prompt_bias: torch.Tensor | None = None) -> None:
    """Write one head of a joint attention: q = k rows ``[HEAD_DIM, WIDTH]`` of the visual stream
    (``to_q``/``to_k``) and, where given, of the prompt stream, which the concept stream shares
    (``add_q_proj``/``add_k_proj``: rows ``prompt``, bias ``prompt_bias`` ``[HEAD_DIM]``), and
    the visual v rows :func:`~vidinterp.testing.weights.value_rows` of ``value`` (``to_v``;
    prompt values stay 0)."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear in (attn.to_q, attn.to_k):
        linear.weight[rows] = visual
    for linear in (attn.add_q_proj, attn.add_k_proj):
        if prompt is not None:
            linear.weight[rows] = prompt
        if prompt_bias is not None:
            linear.bias[rows] = prompt_bias
    attn.to_v.weight[rows] = weights.value_rows(HEAD_DIM, WIDTH, value)

