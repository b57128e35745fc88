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
turn by more than :data:`~vidinterp.testing.weights.TURNING` rad per token step (row pairs 4, 5
and column pairs 10, 11: 1 and 0.22 rad per step), with the gain that makes the worst gap between
a token's own key and any other visual key the match's logit on the native grid.

Text encoders: a ``T5EncoderModel`` with no layers, whose word embeddings are unit directions
(``red``, ``blue``, everything else) that T5's final RMS norm keeps, feeds ``context_embedder``;
the CLIP encoder (pooled vector, which only reaches the zeroed adaptive-norm modulation) has
all-zero weights. Variants: ``"dev"`` (guidance embeddings, FLUX.1-dev's dynamically shifted
schedule) and ``"schnell"`` (neither); the design renoises at step 49 of 50, sigma 0.03 (dev) or
0.02 (schnell).
"""

from __future__ import annotations

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import clip_word_tokenizer, tiny_clip_encoder, word_tokenizer

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
RESIDUAL = weights.ResidualStream(WIDTH)
# head channels (all in the first rotary axis, which never turns)
RED_PAIR, BLUE_PAIR, SINK_PAIR = 2, 4, 6
QK_BALLAST = weights.HeadBallast(HEAD_DIM, channel=0)
# text encoder channels
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


@register_planted("flux")
def planted_flux(variant: str = "dev"):
    """Planted Flux pipeline (see the module docstring). ``variant``: ``"dev"`` (guidance
    embeddings, dynamic shifting) or ``"schnell"`` (neither)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

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
        # the CLIP encoder's pooled vector only reaches the zeroed modulations: all its weights are zero
        text_encoder=weights.zero_parameters(tiny_clip_encoder(tokenizer, hidden_size=TEXT_DIM)), tokenizer=tokenizer,
        text_encoder_2=weights.layer_free_t5(tokenizer_2, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER),
        tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.default_sample_size = GEOMETRY[1] // SPATIAL  # native 16x16 latents: 64x64 pixels
    design = PlantedDesign(
        family="flux", variant=variant, words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=None, uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY, token_cell=SPATIAL * PACK,
        temporal_compression=1, prompt="a red square and a blue square",
    )
    rows, columns = design.token_grid
    image_ids = pipe._prepare_latent_image_ids(1, rows, columns, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        _plant(transformer, weights.RotaryGrid(rotary_angles(*transformer.pos_embed(image_ids)), (1, rows, columns)))
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _plant(transformer, grid: weights.RotaryGrid) -> None:
    """Write every weight of ``transformer`` (``grid``: the rotary angles of the native visual
    tokens)."""
    weights.zero_parameters(transformer)

    # visual tokens: packed latent [channels x 2 x 2] -> residual features (share of the token)
    visual = transformer.x_embedder.weight.view(WIDTH, LATENT_CHANNELS, PACK * PACK)
    weights.embed_colour_shares(visual, {"red": RED, "blue": BLUE})
    weights.mirror(transformer.x_embedder.bias, BALLAST, RESIDUAL.ballast)
    # prompt and concept tokens: T5's RMS norm turns a unit direction into sqrt(TEXT_DIM) times it
    text = transformer.context_embedder
    for channel, t5 in ((RED, T5_RED), (BLUE, T5_BLUE)):
        weights.mirror(text.weight, channel, weights.unit(TEXT_DIM, t5) * TEXT_DIM**-0.5)
    weights.mirror(text.bias, BALLAST, RESIDUAL.ballast)

    turning = grid.turning_pairs()
    blocks = transformer.transformer_blocks
    # the self matches have delta = 0, so their q and k are the same bias
    concept = sum(weights.match(HEAD_DIM, pair, RESIDUAL.reading(channel), weights.LOCALISING_LOGIT, mirrored=True)
                  for pair, channel in ((RED_PAIR, RED), (BLUE_PAIR, BLUE)))
    self_match = weights.positional_match(grid, turning, frames_back=0, logit=weights.SELF_LOGIT, head_dim=HEAD_DIM,
                                          reading=weights.CONSTANT)
    _plant_head(blocks[LOCALISING].attn, LOCALISING_HEAD, visual=concept, visual_bias=self_match.query, text=concept,
                value={0: RESIDUAL.reading(RED), 1: RESIDUAL.reading(BLUE)})
    identity = weights.positional_match(grid, turning, frames_back=0, logit=weights.POSITION_LOGIT, head_dim=HEAD_DIM,
                                        reading=weights.CONSTANT)
    sink = weights.match(HEAD_DIM, SINK_PAIR, weights.CONSTANT, weights.SINK_LOGIT, mirrored=True)
    for head in range(HEADS):
        _plant_head(blocks[IDENTITY].attn, head, visual_bias=identity.query, text_bias=sink, value={})
    for block in blocks:
        attn = block.attn
        for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
            norm.weight.copy_(QK_BALLAST.norm_weight())


def _plant_head(attn, head: int, *, visual: torch.Tensor | None = None, visual_bias: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_bias: torch.Tensor | None = None,
                value: dict[int, torch.Tensor]) -> None:
    """Write one head of a dual-stream attention: the same q and k rows ``[HEAD_DIM, WIDTH]``
    and bias ``[HEAD_DIM]`` (absent: zero) on each stream (``visual`` through ``to_q``/``to_k``,
    ``text`` through ``add_q_proj``/``add_k_proj`` for the prompt and concept tokens), each bias
    plus the ballast :data:`QK_BALLAST` (the q/k RMSNorm's weight undoes its nearly constant
    spread and zeroes it), and the visual v rows :func:`~vidinterp.testing.weights.value_rows`
    of ``value`` (prompt and concept values stay zero)."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linears, weight, bias in (((attn.to_q, attn.to_k), visual, visual_bias),
                                  ((attn.add_q_proj, attn.add_k_proj), text, text_bias)):
        for linear in linears:
            if weight is not None:
                linear.weight[rows] = weight
            linear.bias[rows] = QK_BALLAST.bias() if bias is None else bias + QK_BALLAST.bias()
    attn.to_v.weight[rows] = weights.value_rows(HEAD_DIM, WIDTH, value)
