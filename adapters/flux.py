"""Flux (FLUX.1 dev / schnell, ``FluxPipeline``): sites, concept stream, one-frame geometry.

Sites, in execution order: the ``N`` dual-stream blocks' ``transformer_blocks.{i}.attn`` are
``blocks.{i}.attn`` and carry the concept stream; the single-stream blocks'
``single_transformer_blocks.{j}.attn`` are ``blocks.{N + j}.attn`` without one (ConceptAttention
stops the concepts at the dual-stream blocks). Every site is joint: the sequence is the ``T``
prompt tokens (T5, padding included: Flux attends to every slot) then the ``h*w`` visual tokens
(latents packed into 2x2 patches). Rotary embeddings apply to the whole sequence; prompt tokens
have position ids 0 (identity rotation), and so do the concepts, which therefore skip rotary.

CFG: Flux is guidance-distilled; ``guidance_scale`` is an embedded scalar, so there is no
batched CFG (``cfg_batched`` is False). With true CFG (``true_cfg_scale > 1`` and a negative
prompt) the pipeline makes a second, ``"uncond"`` call per step, which is not analysed.

Attention is captured where the stock processor calls diffusers' attention dispatch, so any
processor that dispatches (and the backend the user chose) works.

Concept stream (docs/methods.md): concepts are T5-encoded like the prompt (each alone, padded to the
prompt's ``max_sequence_length``), projected by ``context_embedder`` and updated in the dual-stream
blocks with the prompt stream's weights (``norm1_context``/``norm2_context`` modulation and
gates, ``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``, ``ff_context``).

Images are videos of one frame: ``num_frames`` must be 1. Renoising encodes with the VAE's shift
and scaling; latents stay unpacked ``[1, C, h, w]`` between steps (the pipeline's noise layout)
and are packed with the pipeline's own helpers for each transformer call.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from vidinterp.adapter import ConceptReduction, ConceptTokens, joint_site_specs, reduce_concept_rows, word_pieces
from vidinterp.layout import TokenLayout, token_layout
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

from ._mmdit import ImageMMDiTAdapter

__all__ = ["FluxAdapter"]


@register_adapter
class FluxAdapter(ImageMMDiTAdapter):
    family = "flux"
    transformer_class_names = ("FluxTransformer2DModel",)
    default_renoise_guidance = None  # embedded guidance: keep the pipeline default
    token_order = "prompt_first"

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(
            self.transformer, [("transformer_blocks", "attn", True), ("single_transformer_blocks", "attn", False)]
        )

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """The visual grid comes from ``img_ids`` (row and column ids of the packed tokens)."""
        latents, image_ids = arguments["hidden_states"], arguments["img_ids"]
        image_ids = image_ids[0] if image_ids.ndim == 3 else image_ids
        rows, columns = (int(image_ids[:, axis].max()) + 1 for axis in (1, 2))
        if rows * columns != latents.shape[1]:
            raise ValueError(
                f"img_ids span a {rows}x{columns} grid but the call has {latents.shape[1]} visual "
                f"tokens; vidinterp supports plain FluxPipeline calls (no extra conditioning tokens)"
            )
        cell = self.geometry().token_cell
        return token_layout(1, rows, columns, arguments["encoder_hidden_states"].shape[1], self.token_order,
                            batch=latents.shape[0], frame_spans=((0, 0),), pixels_per_token=(cell, cell))

    # ---------------------------------------------------------------- text
    @property
    def max_sequence_length(self) -> int:
        """T5 length of prompts: the pipeline's default, capped by the tokenizer's limit."""
        default = self.call_default("max_sequence_length")
        return int(min(default, self.pipe.tokenizer_2.model_max_length))

    @property
    def prompt_tokens(self) -> int:
        return self.max_sequence_length

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is T5-encoded alone exactly as the pipeline encodes a prompt (padded to
        :attr:`max_sequence_length`), then reduced over its sub-tokens (no BOS in T5)."""
        length = self.max_sequence_length
        ids_and_pieces = [word_pieces(self.pipe.tokenizer_2, concept) for concept in concepts]
        with torch.no_grad():
            hidden = self.pipe._get_t5_prompt_embeds(prompt=list(concepts), max_sequence_length=length,
                                                     device=self.device)
        positions = [list(range(min(len(ids), length - 1))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        embeddings = reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction)
        return ConceptTokens(list(concepts), embeddings, pieces, reduction)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt (``tokenizer_2``): Flux's prompt sequence."""
        return locate_prompt_words(self.pipe.tokenizer_2, prompt, concepts, reduction,
                                   max_length=self.max_sequence_length, model="Flux")

    # ---------------------------------------------------------------- geometry
    def patch(self) -> int:
        """The 2x2 latent packing times the transformer's patch size."""
        return 2 * int(self.transformer.config.patch_size)

    # ---------------------------------------------------------------- running
    def cfg_batched(self, guidance_scale: float) -> bool:
        return False

    def unconditional_branch(self, scale: float) -> dict[str, Any]:
        """True CFG (``true_cfg_scale``, with a negative prompt): ``guidance_scale`` is embedded."""
        return {"true_cfg_scale": scale}

    def latents_from_pipeline(self, latents: torch.Tensor, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The pipeline's packed ``[B, h*w/4, 4C]`` latents unpacked to ``[B, C, h, w]``."""
        _, height, width = geometry
        return self.pipe._unpack_latents(latents, height, width, int(self.pipe.vae_scale_factor))

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"height": height, "width": width, "max_sequence_length": self.max_sequence_length}

    def _schedule_kwargs(self, num_inference_steps: int, visual_tokens: int) -> dict[str, Any]:
        """As ``FluxPipeline``: ``sigmas = linspace(1, 1/n, n)`` (none with flow sigmas) and
        ``mu`` from the packed sequence length (ignored without dynamic shifting)."""
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        return {"sigmas": sigmas, "mu": self._shift(visual_tokens)}

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``latents``: unpacked ``[1, C, h, w]``. ``guidance_scale`` is Flux's embedded guidance
        (used when the transformer has guidance embeddings, as the pipeline does); there is no
        true CFG here, so ``negative_prompt`` is ignored with a warning."""
        pipe, transformer = self.pipe, self.transformer
        if negative_prompt:
            warnings.warn("Flux is guidance-distilled: negative_prompt is ignored when renoising", stacklevel=2)
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        batch, channels, height, width = latents.shape
        image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, prompt_embeds.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=self.device, dtype=torch.float32).expand(batch)
        scale = int(pipe.vae_scale_factor)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            packed = pipe._pack_latents(current, batch, channels, height, width)
            with transformer.cache_context("cond"):
                output = transformer(
                    hidden_states=packed,
                    timestep=timestep.expand(batch).to(packed.dtype) / 1000,
                    guidance=guidance,
                    pooled_projections=pooled,
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=image_ids,
                    return_dict=False,
                )[0]
            return pipe._unpack_latents(output, height * scale, width * scale, scale)

        return call
