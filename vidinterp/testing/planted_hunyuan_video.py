"""Planted HunyuanVideo: ``HunyuanVideoPipeline`` and ``HunyuanVideoTransformer3DModel`` with hand-set weights.

Geometry: 9 frames at 48x64 pixels (multiples of the pipeline's 16); the latent mapping
compresses 4x in space and time and the patch is 2, so a token covers 8x8 pixels: 3 token frames
of 6x8 tokens. 4 double-stream blocks of 4 heads of 32 channels (width 128) and no single-stream
block (the class allows none; the double-stream blocks carry vidinterp's concept stream).
Rotary positions on visual tokens (theta 256 as HunyuanVideo, axes 8 / 12 / 12 channels). Prompt
slots: the pipeline's 256 (``max_sequence_length``), padded slots masked as keys. The scheduler
is flow matching with shift 1, so the renoise step 49 of 50 is at sigma 0.02.

Blocks (every adaptive-norm modulation is zero: no shift, no scale, and zero gates, so the
visual and the prompt residual streams stay the input embeddings through every block) follow the
planted CogVideoX's design, with the head programs of
:meth:`~vidinterp.testing.weights.JointVideoLayout.head_programs`: block 0 is uniform (q = k = v
= 0 in every head); head 1 of block 1 localises ``red`` and ``blue`` (q = k = red-ness and
blue-ness, of visual and text tokens alike; v = the visual red-ness and blue-ness); head 2 of
block 2 is the motion head (a visual query at token frame f matches the key at its own row and
column in frame f - 1, through rotary; v = the latent clock); every head of block 3 matches each
visual query with its own key (identity).

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
motion and identity heads use the pairs that turn by more than
:data:`~vidinterp.testing.weights.TURNING` rad per step (time pairs 0-1, row pairs 4-6, column
pairs 10-12), with the gain that makes the worst gap between the target key and any other visual
key :data:`~vidinterp.testing.weights.POSITION_LOGIT` on the native grid.

Text path. The tokenizer is the adapter's offline Llama-3-style one (the pipeline's template
prefix is exactly its ``crop_start`` of 95 tokens). The Llama text encoder has two layers,
because the pipeline reads the hidden state three from the end, which for two layers is the
token embedding: each planted word (``red`` and ``" red"``, ``blue`` and ``" blue"``, as the
template and the prompt spell them) embeds as one unit direction, every other token as zero; the
layers are zero and never read. The token refiner (``context_embedder``) projects the embedding
into the residual channels with ``proj_in``; its one refiner block is gated off. The CLIP text
encoder has no layer and zero weights (its pooled output, like the timestep and guidance
embeddings, only reaches the zeroed modulations).
"""

from __future__ import annotations

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted, rotary_angles
from vidinterp.testing.tiny import word_tokenizer
from vidinterp.testing.tiny_hunyuan_video import tiny_llama_tokenizer

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

#: residual and head channels (see the module docstring)
LAYOUT = weights.JointVideoLayout(
    residual=weights.ResidualStream(WIDTH), ballast=0, visual=2, text=4, clock=14,
    words={"red": (6, 10, 18), "blue": (8, 12, 30)},  # (visual feature, text feature, head pair)
    sink_pair=4, qk_ballast=weights.HeadBallast(HEAD_DIM, channel=6),
)
CLOCK_SCALE = 1 / 16
# Llama embedding channels
LLAMA_RED, LLAMA_BLUE = 0, 1


@register_planted("hunyuan_video")
def planted_hunyuan_video(variant: str = "t2v"):
    """Planted HunyuanVideo pipeline (see the module docstring). ``variant``: ``"t2v"``
    (text-to-video, guidance-distilled)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

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
    tokenizer = tiny_llama_tokenizer(HunyuanVideoPipeline)
    tokenizer_2 = word_tokenizer(model_max_length=77)
    pipe = HunyuanVideoPipeline(
        text_encoder=_llama(tokenizer), tokenizer=tokenizer, transformer=transformer,
        vae=PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT), text_encoder_2=_clip(tokenizer_2),
        tokenizer_2=tokenizer_2,
    )
    design = PlantedDesign(
        family="hunyuan_video", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH, temporal_compression=TEMPORAL,
    )
    latents = torch.zeros(1, LATENT_CHANNELS, (frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL)
    grid = weights.RotaryGrid(rotary_angles(*transformer.rope(latents)), (design.token_frames, *design.token_grid))
    with torch.no_grad():
        _plant(transformer, design, grid)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _llama(tokenizer):
    """A two-layer Llama whose hidden state three from the end (the one the pipeline reads) is
    the token embedding: ``red`` / ``" red"`` and ``blue`` / ``" blue"`` are unit directions,
    every other token zero; the layers are zero."""
    from transformers import LlamaConfig, LlamaModel

    encoder = weights.zero_parameters(LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=TEXT_DIM, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval())
    spellings = {spelling: channel for word, channel in (("red", LLAMA_RED), ("blue", LLAMA_BLUE))
                 for spelling in (word, " " + word)}
    weights.word_directions(encoder.embed_tokens.weight, tokenizer, spellings)
    return encoder


def _clip(tokenizer):
    """A layer-free CLIP text encoder with zero weights: the pooled embedding is zero."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return weights.zero_parameters(CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=POOLED_DIM, intermediate_size=POOLED_DIM, num_hidden_layers=0,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval())


def _plant(transformer, design: PlantedDesign, grid: weights.RotaryGrid) -> None:
    """Write every weight of ``transformer`` (``grid``: the rotary angles of the native visual
    tokens). Every weight not named below is zero: modulations, gates, the refiner block, the
    MLPs, the output projections and the final projection."""
    weights.zero_parameters(transformer)
    embed = transformer.x_embedder.proj
    LAYOUT.embed_visual(embed.weight, embed.bias, CLOCK_SCALE)  # weight [WIDTH, LATENT_CHANNELS, 1, 2, 2]
    text = transformer.context_embedder.proj_in  # reads the Llama embedding: a unit direction per planted word
    LAYOUT.embed_text(text.weight, text.bias, {"red": LLAMA_RED, "blue": LLAMA_BLUE}, 1.0)
    blocks = transformer.transformer_blocks
    for (layer, head), program in LAYOUT.head_programs(design, HEADS, grid).items():
        _plant_head(blocks[layer].attn, head, program)
    for block in blocks:
        attn = block.attn
        for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
            norm.weight.copy_(LAYOUT.qk_ballast.norm_weight())


def _plant_head(attn, head: int, program: weights.HeadProgram) -> None:
    """Write one head into the visual and the prompt projections alike: the q/k rows of
    ``program`` plus the q/k ballast (so the q/k RMS norm divides by a nearly constant spread,
    which its weight undoes), and the v rows of ``program``."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for linear, weight in ((attn.to_q, program.qk.query), (attn.add_q_proj, program.qk.query),
                           (attn.to_k, program.qk.key), (attn.add_k_proj, program.qk.key)):
        linear.weight[rows] = weight
        linear.bias[rows] = LAYOUT.qk_ballast.bias()
    for linear in (attn.to_v, attn.add_v_proj):
        linear.weight[rows] = weights.value_rows(HEAD_DIM, WIDTH, program.value)
