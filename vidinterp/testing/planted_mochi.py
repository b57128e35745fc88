"""Planted Mochi: ``MochiPipeline`` and ``MochiTransformer3DModel`` with hand-set weights.

Geometry: 13 frames at 96x128 pixels. The pipeline assumes 6x temporal and 8x spatial VAE
compression and the patch is 2, so a token covers 16x16 pixels: 3 token frames of 6x8 tokens.
4 blocks of 4 heads of 32 channels: a visual stream of width 128 and a prompt stream of width 64
(Mochi's streams differ in width: ``pooled_projection_dim``). Prompt slots: the pipeline's 256,
the padded ones masked (the model drops them). The scheduler inverts its sigmas as Mochi's does;
the renoise step 49 of 50 of the linear-quadratic schedule leaves sigma 0.075.

Blocks (every adaptive-norm modulation is zero: ``1 + scale = 1`` and ``tanh(gate) = 0``, so both
residual streams stay the input embeddings through every block) follow the planted
HunyuanVideo's design, with the head programs of
:meth:`~vidinterp.testing.weights.JointVideoLayout.head_programs`: block 0 is uniform (q = k = v =
0); head 1 of block 1 localises ``red`` and ``blue`` (q = k = red-ness and blue-ness of visual and
text tokens alike; v = the visual red-ness and blue-ness); head 2 of block 2 is the motion head (a
visual query at token frame f matches the key at its own row and column in frame f - 1, through
rotary; v = the latent clock); every head of block 3 matches each visual query with its own key
(identity). Each head writes the same program into the visual projections (``to_*``) and the
prompt projections (``add_*_proj``, which also project the concept stream).

Residual channels (mirrored pairs ``(+f, -f)``; the blocks' RMS norms have no weight and divide by
the ballast-dominated spread): ``0/1`` ballast, ``2/3`` visual indicator, ``4/5`` text indicator,
``6/7`` visual red-ness, ``8/9`` visual blue-ness, ``10/11`` the word "red", ``12/13`` the word
"blue", ``14/15`` clock / 16. The prompt stream holds the text channels in its first 64 channels,
with ballast ``B sqrt(64 / 128)`` so that its RMS norm divides by the visual stream's spread and
the same readings serve both (the prompt projections are the first 64 columns of the visual
ones).

Head channels (``head_dim`` 32, rotary pairs ``(2m, 2m+1)``). Mochi's projections have no bias, so
the q/k ballast of the per-head RMS norms in pair 0 reads the visual and text indicators (1 on
every token). Mochi's rotary frequencies are a parameter (``pos_frequencies``, per axis, head and
pair), planted here: pairs 0-3 do not turn (ballast, the text sink, red, blue), pairs 4-7 turn
with time, 8-11 with rows and 12-15 with columns, by 1.0, 0.7, 0.45 and 0.3 rad per step on the
native grid (Mochi spaces rows and columns ``sqrt(192^2 / (rows * columns))`` apart).

VAE: the planted latent mapping without ``latents_mean`` / ``latents_std`` (the pipeline's decode
reads them as 12 channels; without them it only divides by the scaling factor, 1). Text encoder: a
``T5EncoderModel`` with no layers (``red``, ``blue``, everything else as unit directions); the
caption projection writes the text channels, exactly 1 for a planted word.
"""

from __future__ import annotations

import math

import torch

from vidinterp.testing import weights
from vidinterp.testing.latent import LATENT_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, register_planted
from vidinterp.testing.tiny import word_tokenizer

__all__ = ["planted_mochi"]

HEADS, HEAD_DIM, TEXT_WIDTH, TEXT_DIM = 4, 32, 64, 32
WIDTH = HEADS * HEAD_DIM
GEOMETRY = (13, 96, 128)
SPATIAL, TEMPORAL, PATCH = 8, 6, 2
UNIFORM, LOCALISING, MOTION, IDENTITY = 0, 1, 2, 3
LOCALISING_HEAD, MOTION_HEAD = 1, 2

#: residual and head channels (see the module docstring)
LAYOUT = weights.JointVideoLayout(
    residual=weights.ResidualStream(WIDTH), ballast=0, visual=2, text=4, clock=14,
    words={"red": (6, 10, 4), "blue": (8, 12, 6)},  # (visual feature, text feature, head pair)
    sink_pair=2, qk_ballast=weights.HeadBallast(HEAD_DIM, channel=0),
)
TEXT_BALLAST = LAYOUT.residual.ballast * math.sqrt(TEXT_WIDTH / WIDTH)
CLOCK_SCALE = 1 / 16
#: radians per step of the turning rotary pairs on the native grid, for each axis
TURNS = (1.0, 0.7, 0.45, 0.3)
T5_RED, T5_BLUE, T5_OTHER = 0, 1, 2


@register_planted("mochi")
def planted_mochi(variant: str = "t2v"):
    """Planted Mochi pipeline (see the module docstring). ``variant``: ``"t2v"``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    if variant != "t2v":
        raise ValueError(f"unknown planted Mochi variant {variant!r}; expected 't2v'")
    transformer = MochiTransformer3DModel(
        patch_size=PATCH, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=4,
        pooled_projection_dim=TEXT_WIDTH, in_channels=LATENT_CHANNELS, text_embed_dim=TEXT_DIM, time_embed_dim=32,
    ).eval()
    transformer.register_to_config(native_geometry=GEOMETRY)
    tokenizer = word_tokenizer()
    text_encoder = weights.layer_free_t5(tokenizer, TEXT_DIM, {"red": T5_RED, "blue": T5_BLUE}, T5_OTHER)
    vae = PlantedLatentMapping(spatial_compression=SPATIAL, temporal_compression=TEMPORAL).eval()
    vae.register_to_config(latents_mean=None, latents_std=None)
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True), vae=vae,
                         text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    design = PlantedDesign(
        family="mochi", variant="t2v", words=dict(PLANTED_WORDS), localising=(LOCALISING, LOCALISING_HEAD),
        motion=(MOTION, MOTION_HEAD), uniform_layer=UNIFORM, identity_layer=IDENTITY, geometry=GEOMETRY,
        token_cell=SPATIAL * PATCH, temporal_compression=TEMPORAL,
    )
    with torch.no_grad():
        weights.zero_parameters(transformer)
        grid = _plant_rotary(transformer, (design.token_frames, *design.token_grid))
        _plant(transformer, design, grid)
    pipe.set_progress_bar_config(disable=True)
    pipe.vidinterp_planted = design
    return pipe


def _plant_rotary(transformer, shape: tuple[int, int, int]) -> weights.RotaryGrid:
    """Set ``pos_frequencies`` (see the module docstring) and return the rotary angles of the
    native visual tokens (every head has the same)."""
    frames, rows, columns = shape
    spacing = math.sqrt(transformer.rope.target_area / (rows * columns))  # position units per row / column
    for axis, per_unit in enumerate((1.0, spacing, spacing)):
        for index, turn in enumerate(TURNS):
            transformer.pos_frequencies[axis, :, 4 + 4 * axis + index] = turn / per_unit
    cos, sin = transformer.rope(transformer.pos_frequencies, frames, rows, columns, dtype=torch.float32)
    return weights.RotaryGrid(torch.atan2(sin[:, 0].double(), cos[:, 0].double()), shape)


def _plant(transformer, design: PlantedDesign, grid: weights.RotaryGrid) -> None:
    """Write the embeddings, the q/k norms and every planted head; every other weight stays zero
    (modulations, gates, MLPs, output projections, the time embedding and the final layer)."""
    embed = transformer.patch_embed.proj  # weight [WIDTH, LATENT_CHANNELS, 2, 2]
    LAYOUT.embed_visual(embed.weight, embed.bias, CLOCK_SCALE)
    # caption projection [TEXT_WIDTH, TEXT_DIM]; T5's unit directions come out sqrt(TEXT_DIM) long
    caption = transformer.time_embed.caption_proj
    LAYOUT.embed_text(caption.weight, caption.bias, {"red": T5_RED, "blue": T5_BLUE}, TEXT_DIM**-0.5)
    weights.mirror(caption.bias, LAYOUT.ballast, TEXT_BALLAST)
    for (layer, head), program in LAYOUT.head_programs(design, HEADS, grid).items():
        _plant_head(transformer.transformer_blocks[layer].attn1, head, program)
    for block in transformer.transformer_blocks:
        attn = block.attn1
        for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
            norm.weight.copy_(LAYOUT.qk_ballast.norm_weight())


def _plant_head(attn, head: int, program: weights.HeadProgram) -> None:
    """One head, in the visual projections and (their first ``TEXT_WIDTH`` columns) the prompt
    projections: the q/k rows of ``program`` plus the q/k ballast read from the token indicators
    (no biases), and the v rows."""
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    ballast = torch.zeros(HEAD_DIM, WIDTH)
    # 1 on every token, visual or text
    constant = LAYOUT.residual.reading(LAYOUT.visual) + LAYOUT.residual.reading(LAYOUT.text)
    weights.mirror(ballast, LAYOUT.qk_ballast.channel, LAYOUT.qk_ballast.value * constant)
    value = weights.value_rows(HEAD_DIM, WIDTH, program.value)
    for visual, prompt, weight in ((attn.to_q, attn.add_q_proj, program.qk.query + ballast),
                                   (attn.to_k, attn.add_k_proj, program.qk.key + ballast),
                                   (attn.to_v, attn.add_v_proj, value)):
        visual.weight[rows] = weight
        prompt.weight[rows] = weight[:, :TEXT_WIDTH]
