"""Planted Flux: ``FluxPipeline`` and ``FluxTransformer2DModel`` with hand-set weights.

Geometry: an image, i.e. a video of one frame, at 64x64 pixels; the latent mapping compresses
4x in space and the pipeline packs 2x2 latent cells into a token, so a token covers 8x8 pixels:
8x8 tokens. 3 dual-stream blocks of 4 heads of 32 channels (width 128) and no single-stream
block (the class allows none); rotary axes ``(8, 12, 12)``. Prompt slots: 16 T5 tokens. There is
no motion head (one frame has no motion), and the design's prompt, "a red square and a blue
square", names none.

Dual-stream blocks (every adaptive-norm modulation is zero: no shift, no scale, and zero gates,
so both streams stay their input embeddings through every block; the timestep, guidance and
pooled-text embedding is zero too, and so is the output projection: the transformer predicts zero
velocity):

==========  ====================================================================================
block 0     uniform: q = k = v = 0 in every head, both streams
block 1     head 1 localises ``red`` and ``blue``: q = k = (red-ness, blue-ness) of a token, the
            visual and the prompt/concept streams alike; visual tokens also match themselves
            (through rotary), so each visual output is its own value; v = the visual red-ness
            and blue-ness (prompt and concept values are zero)
block 2     identity: every head matches each visual query with its own key (through rotary);
            prompt and concept tokens match each other (a constant "sink" direction)
==========  ====================================================================================

Residual channels (each feature ``f`` written as the mirrored pair ``(+f, -f)``), the same layout
in both streams, which never share a projection (visual tokens go through ``x_embedder``,
``norm1`` and ``to_{q,k,v}``; prompt and concept tokens through ``context_embedder``,
``norm1_context`` and ``add_{q,k,v}_proj``): ``0/1`` ballast ``+-B``; ``2/3`` red-ness, ``4/5``
blue-ness (visual tokens: share of the token's pixels of that colour; prompt and concept tokens:
1 for the word ``red`` / ``blue``). Constant directions (positions, the sink, the q/k ballast)
are projection biases.

Head channels (``head_dim`` 32; rotary pairs ``(2m, 2m+1)``: 0-7 the first id axis, 8-19 rows,
20-31 columns, each axis from its fastest to its slowest frequency). Flux gives every token id 0
on the first axis (and prompt tokens id 0 on all three), so rotary leaves channels 0-7 exactly
unchanged; they hold everything that must not turn: ``0/1`` the ballast ``+-B`` of the q/k
RMSNorm, whose weight is zero there; ``2/3`` red-ness and ``4/5`` blue-ness of the localising
head; ``6/7`` the sink of the identity layer. The self matches use the row and column pairs that
turn by more than 0.2 rad per token step (row pairs 4, 5 and column pairs 10, 11: 1 and 0.22
rad per step).

Text encoders: a ``T5EncoderModel`` with no layers, whose word embeddings are unit directions
(``red``, ``blue``, everything else) that T5's final RMS norm keeps, feeds ``context_embedder``;
the CLIP encoder (pooled vector, which only reaches the zeroed adaptive-norm modulation) has
all-zero weights. Variants: ``"dev"`` (guidance embeddings, FLUX.1-dev's dynamically shifted
schedule) and ``"schnell"`` (neither); the design renoises at step 49 of 50, sigma 0.03 (dev) or
0.02 (schnell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vidinterp.testing.latent import COLOR_CHANNELS, LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["planted_flux"]

HEADS, HEAD_DIM, TEXT_DIM, TEXT_LENGTH = 4, 32, 32, 16
WIDTH = HEADS * HEAD_DIM
ROTARY_AXES = (8, 12, 12)
GEOMETRY = (1, 64, 64)
SPATIAL, PACK = 4, 2
UNIFORM, LOCALISING, IDENTITY = 0, 1, 2
LOCALISING_HEAD = 1
VARIANTS = ("dev", "schnell")

# residual channels
BALLAST, RED, BLUE = 0, 2, 4
RESIDUAL_BALLAST = 32.0
#: the residual LayerNorm's spread: every token is dominated by the ballast, sqrt(2 B^2 / WIDTH)
RESIDUAL_SPREAD = (2 * RESIDUAL_BALLAST**2 / WIDTH) ** 0.5
# head channels (all in the first rotary axis, which never turns)
HEAD_BALLAST, RED_PAIR, BLUE_PAIR, SINK_PAIR = 0, 2, 4, 6
HEAD_BALLAST_VALUE = 100.0
#: the q/k RMSNorm's root mean square, dominated by the ballast: sqrt(2 B^2 / HEAD_DIM)
HEAD_SPREAD = (2 * HEAD_BALLAST_VALUE**2 / HEAD_DIM) ** 0.5
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


def _mirror(weight: torch.Tensor, channel: int, values: torch.Tensor) -> None:
    """Write ``values`` to row ``channel`` and ``-values`` to row ``channel + 1``."""
    weight[channel] = values
    weight[channel + 1] = -values


def _design(variant: str) -> PlantedDesign:
    return PlantedDesign(
        family="flux", variant=variant, words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=None, uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY, token_cell=SPATIAL * PACK,
        temporal_compression=1, prompt="a red square and a blue square",
    )


@register_planted("flux")
def planted_flux(variant: str = "dev"):
    """Planted Flux pipeline (see the module docstring). ``variant``: ``"dev"`` (guidance
    embeddings, dynamic shifting) or ``"schnell"`` (neither)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from vidinterp.adapters._mmdit import clip_word_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown planted Flux variant {variant!r}; expected one of {VARIANTS}")
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=PACK * PACK * LATENT_CHANNELS, num_layers=3, num_single_layers=0,
        attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM, guidance_embeds=variant == "dev", axes_dims_rope=ROTARY_AXES,
    ).eval()
    tokenizer_2 = word_tokenizer(model_max_length=TEXT_LENGTH)
    tokenizer = clip_word_tokenizer(model_max_length=TEXT_LENGTH)
    if variant == "dev":  # FLUX.1-dev's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=1).eval(),
        text_encoder=_clip_encoder(tokenizer), tokenizer=tokenizer, text_encoder_2=_t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.default_sample_size = GEOMETRY[1] // SPATIAL  # native 16x16 latents: 64x64 pixels
    rows, columns = GEOMETRY[1] // (SPATIAL * PACK), GEOMETRY[2] // (SPATIAL * PACK)
    image_ids = pipe._prepare_latent_image_ids(1, rows, columns, torch.device("cpu"), torch.float32)
    angles = rotary_angles(*transformer.pos_embed(image_ids))
    with torch.no_grad():
        _plant(transformer, angles, columns)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = _design(variant)
    return pipe


def _clip_encoder(tokenizer):
    """The adapter's tiny CLIP text encoder with every weight zero: its pooled vector is zero."""
    from vidinterp.adapters._mmdit import tiny_clip_encoder

    encoder = tiny_clip_encoder(tokenizer, hidden_size=TEXT_DIM)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.zero_()
    return encoder


def _t5_encoder(tokenizer):
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


@dataclass
class _HeadRows:
    """q, k or v rows of one head on one stream: ``weight`` ``[HEAD_DIM, WIDTH]`` reads the
    block's normalised residual, ``bias`` ``[HEAD_DIM]`` adds a constant."""

    weight: torch.Tensor
    bias: torch.Tensor

    @staticmethod
    def zero() -> "_HeadRows":
        """Rows that write nothing."""
        return _HeadRows(torch.zeros(HEAD_DIM, WIDTH), torch.zeros(HEAD_DIM))

    def __add__(self, other: "_HeadRows") -> "_HeadRows":
        return _HeadRows(self.weight + other.weight, self.bias + other.bias)


def _reading(channel: int) -> torch.Tensor:
    """A ``[WIDTH]`` row reading the mirrored residual feature at ``channel`` from the block's
    LayerNorm output: ``(y_c - y_{c+1}) / 2`` cancels the norm's mean exactly, and the factor
    :data:`RESIDUAL_SPREAD` undoes its division, so a feature of value 1 reads as 1."""
    row = torch.zeros(WIDTH)
    row[channel] = RESIDUAL_SPREAD / 2
    row[channel + 1] = -RESIDUAL_SPREAD / 2
    return row


def _static(pair: int, channel: int, logit: float) -> _HeadRows:
    """q or k rows putting the mirrored feature ``(g f, -g f)`` of residual ``channel`` in the
    head channel pair starting at ``pair`` (a pair of the first rotary axis, which never
    turns): two tokens whose features
    are 1 score ``logit`` (after the ``1 / sqrt(head_dim)`` scale)."""
    gain = (logit * HEAD_DIM**0.5 / 2) ** 0.5
    rows = _HeadRows.zero()
    _mirror(rows.weight, pair, gain * _reading(channel))
    return rows


def _constant(pair: int, logit: float) -> _HeadRows:
    """q or k bias ``(g, -g)`` in the head channel pair starting at ``pair``: every two tokens
    carrying it score ``logit``."""
    rows = _HeadRows.zero()
    _mirror(rows.bias, pair, torch.tensor((logit * HEAD_DIM**0.5 / 2) ** 0.5))
    return rows


def _positional(pairs: list[int], logit: float) -> _HeadRows:
    """q or k bias of a self match: ``g (1, 0)`` in every rotary pair ``m`` of ``pairs``. After
    rotary, query ``i`` scores key ``j`` ``g^2 sum_m cos(phi_m(i) - phi_m(j))``, largest at
    ``j = i``; a key one step off in an axis scores at least ``g^2 (1 - cos 1)`` less, which is
    ``logit`` after the ``1 / sqrt(head_dim)`` scale."""
    gain = (logit * HEAD_DIM**0.5 / (1 - math.cos(1.0))) ** 0.5
    rows = _HeadRows.zero()
    for m in pairs:
        rows.bias[2 * m] = gain
    return rows


def _value(*channels: int) -> _HeadRows:
    """v rows copying residual ``channels[i]`` (times :data:`VALUE_GAIN`) to head channel ``i``."""
    rows = _HeadRows.zero()
    for index, channel in enumerate(channels):
        rows.weight[index] = VALUE_GAIN * _reading(channel)
    return rows


def _turning_pairs(angles: torch.Tensor, columns: int) -> list[int]:
    """Rotary pairs that turn by more than :data:`TURNING` (``|sin(step / 2)|``) per token step
    along rows or columns (``angles``: ``[tokens, pairs]``, row-major tokens, ``columns`` per
    row). The first axis never turns, so the pairs reserved there are never among them."""
    steps = torch.stack([angles[columns] - angles[0], angles[1] - angles[0]])
    return [m for m in range(HEAD_DIM // 2) if float(torch.sin(steps[:, m] / 2).abs().max()) > TURNING]


def _plant(transformer, angles: torch.Tensor, columns: int) -> None:
    """Write every weight of ``transformer`` (``angles``: rotary angles ``[tokens, pairs]`` of
    the native visual tokens, from :func:`~vidinterp.testing.planted.rotary_angles`;
    ``columns``: tokens per row)."""
    for parameter in transformer.parameters():
        parameter.zero_()

    # visual tokens: packed latent [channels x 2 x 2] -> residual features (share of the token)
    visual = transformer.x_embedder.weight.view(WIDTH, LATENT_CHANNELS, PACK * PACK)
    amplitude = PlantedLatentMapping().config.amplitude
    for channel, colour in ((RED, "red"), (BLUE, "blue")):
        _mirror(visual[:, COLOR_CHANNELS.index(colour)], channel, torch.full((PACK * PACK,), 1 / (PACK**2 * amplitude)))
    _mirror(transformer.x_embedder.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))
    # prompt and concept tokens: T5's RMS norm turns a unit direction into sqrt(TEXT_DIM) times it
    text = transformer.context_embedder.weight  # [WIDTH, TEXT_DIM]
    for channel, t5 in ((RED, T5_RED), (BLUE, T5_BLUE)):
        _mirror(text, channel, torch.nn.functional.one_hot(torch.tensor(t5), TEXT_DIM).float() * TEXT_DIM**-0.5)
    _mirror(transformer.context_embedder.bias, BALLAST, torch.tensor(RESIDUAL_BALLAST))

    turning = _turning_pairs(angles, columns)
    blocks = transformer.transformer_blocks
    concept = _static(RED_PAIR, RED, LOCALISING_LOGIT) + _static(BLUE_PAIR, BLUE, LOCALISING_LOGIT)
    localising = concept + _positional(turning, SELF_LOGIT)
    _plant_head(blocks[LOCALISING].attn, LOCALISING_HEAD, visual_qk=localising, text_qk=concept,
                visual_value=_value(RED, BLUE))
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn, head, visual_qk=_positional(turning, POSITION_LOGIT),
                    text_qk=_constant(SINK_PAIR, SINK_LOGIT), visual_value=_HeadRows.zero())
    for block in blocks:
        attn = block.attn
        for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
            norm.weight.fill_(HEAD_SPREAD)
            norm.weight[HEAD_BALLAST] = norm.weight[HEAD_BALLAST + 1] = 0.0


def _plant_head(attn, head: int, *, visual_qk: _HeadRows, text_qk: _HeadRows, visual_value: _HeadRows) -> None:
    """Write one head of a dual-stream attention: the same q and k rows (``visual_qk`` on the
    visual stream, ``text_qk`` on the prompt/concept stream), each plus the ballast ``+-B`` that
    makes the q/k RMSNorm divide by the nearly constant :data:`HEAD_SPREAD` (its weight undoes
    that and zeroes the ballast), and the visual value rows (prompt/concept values stay zero)."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    ballast = _HeadRows.zero()
    _mirror(ballast.bias, HEAD_BALLAST, torch.tensor(HEAD_BALLAST_VALUE))
    for linears, program in (((attn.to_q, attn.to_k), visual_qk), ((attn.add_q_proj, attn.add_k_proj), text_qk)):
        for linear in linears:
            linear.weight[rows] = program.weight
            linear.bias[rows] = (program + ballast).bias
    attn.to_v.weight[rows] = visual_value.weight
    attn.to_v.bias[rows] = visual_value.bias


#: softmax logits (after the 1 / sqrt(head_dim) scale): two fully red tokens; a token and
#: itself in the localising head; the gap between a token's own key and one a step off in the
#: identity layer; two prompt/concept tokens there
LOCALISING_LOGIT, SELF_LOGIT, POSITION_LOGIT, SINK_LOGIT = 12.0, 8.0, 6.0, 8.0
#: value of a fully red token in the localising head
VALUE_GAIN = 4.0
TURNING = 0.1  # |sin(step / 2)| above which a rotary pair counts as positional
