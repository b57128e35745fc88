"""SkyReels-V2 (text-to-video and image-to-video): the Wan adapter, for the Wan-derived transformer.

``SkyReelsV2Transformer3DModel`` is Wan2.1's transformer (same blocks, module names, attention,
q/k norm across heads, 3-D rotary, CLIP image context in ``attn2`` for image-to-video) with
diffusion-forcing extras this adapter does not use; ``SkyReelsV2Pipeline`` and
``SkyReelsV2ImageToVideoPipeline`` run it exactly as Wan's pipelines run theirs (prompt cleaned
the same way, 512 UMT5 slots, ``cache_context("cond")`` then ``cache_context("uncond")``, the
VAE's ``latents_mean``/``latents_std``, the I2V mask + first-frame latents as extra channels). So
:class:`SkyReelsV2Adapter` is :class:`~vidinterp.adapters.wan.WanAdapter` (sites
``blocks.{l}.attn`` / ``blocks.{l}.cross_attn``, prompt-word concepts, captured at the stock
processor's attention dispatch) and declares only what differs:

* the transformer class, the family and the model name in errors;
* what it refuses: the diffusion-forcing pipelines (``SkyReelsV2DiffusionForcingPipeline``,
  ``...ImageToVideoPipeline``, ``...VideoToVideoPipeline``) give every latent frame its own
  timestep (a ``[batch, frames]`` timestep, ``enable_diffusion_forcing=True``) and, with
  ``causal_block_size``, a block-causal mask in the self-attention (``num_frame_per_block > 1``);
  one step no longer has one timestep and the self sites no longer attend to every visual
  token, so vidinterp's steps, schedules and self-attention analyses would not mean what they
  say. ``fps`` conditioning (``inject_sample_info``) is only passed by those pipelines too.

Native geometry, when the transformer config does not name one, is the pipeline's ``__call__``
default (SkyReels-V2: 97 frames at 544x960). The pipelines read the VAE's compression from
``vae.temperal_downsample`` (``2 ** sum`` in time, ``2 ** len`` in space), which the adapter
takes from the pipeline's ``vae_scale_factor_*``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vidinterp.adapter import ConceptReduction
from vidinterp.adapters.wan import WanAdapter
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter

__all__ = ["SkyReelsV2Adapter"]

#: pipelines whose per-frame timesteps vidinterp does not support
DIFFUSION_FORCING = "SkyReelsV2DiffusionForcing"


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what}: SkyReels-V2 diffusion forcing (SkyReelsV2DiffusionForcingPipeline, "
        f"SkyReelsV2DiffusionForcingImageToVideoPipeline, SkyReelsV2DiffusionForcingVideoToVideoPipeline) gives each "
        f"latent frame its own timestep and may mask the self-attention block-causally; vidinterp supports "
        f"SkyReelsV2Pipeline and SkyReelsV2ImageToVideoPipeline only"
    )


@register_adapter
class SkyReelsV2Adapter(WanAdapter):
    """SkyReels-V2 ``SkyReelsV2Pipeline`` (text-to-video) and ``SkyReelsV2ImageToVideoPipeline``
    (image-to-video); everything else is :class:`~vidinterp.adapters.wan.WanAdapter`'s."""

    family = "skyreels_v2"
    transformer_class_names = ("SkyReelsV2Transformer3DModel",)
    model_label = "SkyReels-V2"

    def __init__(self, pipe) -> None:
        if type(pipe).__name__.startswith(DIFFUSION_FORCING):
            raise _unsupported(f"{type(pipe).__name__} is not supported")
        super().__init__(pipe)

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """As Wan's; a diffusion-forcing call (per-frame timesteps, block-causal self-attention)
        raises."""
        per_frame = arguments.get("timestep") is not None and arguments["timestep"].ndim > 1
        if arguments.get("enable_diffusion_forcing") or per_frame:
            raise _unsupported("a transformer call with per-frame timesteps (enable_diffusion_forcing)")
        if int(self.transformer.config.get("num_frame_per_block", 1)) > 1:
            raise _unsupported(f"num_frame_per_block={self.transformer.config.num_frame_per_block} "
                               f"(block-causal self-attention)")
        return super().call_layout(arguments, pixel_frames)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """The prompt's UMT5 tokens after the pipelines' ``prompt_clean`` (Wan's function; the
        SkyReels-V2 modules' copy is the same but calls ``ftfy`` unguarded)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return locate_prompt_words(self.pipe.tokenizer, prompt_clean(prompt), concepts, reduction,
                                   max_length=self.max_text_length, model=f"{self.model_label} (no concept stream)")

    def geometry(self) -> Geometry:
        """Wan's rules (config's ``native_geometry`` or the pipeline's defaults; rotary table
        bounds), named SkyReels-V2 in errors."""
        return dataclasses.replace(super().geometry(), model=self.model_label)
