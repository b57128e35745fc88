"""HunyuanVideo (text-to-video): sites, concept stream, geometry, pipelines.

Blocks and sites. ``transformer_blocks.{i}`` are double-stream blocks (separate visual and prompt
weights, joint attention); ``single_transformer_blocks.{j}`` are single-stream blocks (one set of
weights for the concatenated sequence). Both become sites named in execution order:
``blocks.{i}.attn`` for double block ``i`` and ``blocks.{num_double + j}.attn`` for single block
``j``. Only double-stream sites carry the concept stream.

Token order of every attention call: the ``F*h*w`` visual tokens first (frame-major), then the
``T`` prompt slots (``max_sequence_length``, padding included). Padded prompt slots are masked as
keys exactly as the stock model does (every token attends to the visual tokens and to the first
``sum(prompt_attention_mask)`` prompt slots); :attr:`TokenLayout.prompt_mask` says which slots
are real. Rotary embeddings apply to visual q/k only. Attention is captured where the stock
processor calls diffusers' attention dispatch.

Guidance. HunyuanVideo is guidance-distilled: ``guidance_scale`` is embedded into the timestep
conditioning, and the pipeline never batches CFG branches. "True" CFG (``true_cfg_scale > 1``
with a negative prompt) runs a second, separate transformer call per step inside
``transformer.cache_context("uncond")``, which is not analysed (:mod:`vidinterp.branches`).

Concept stream (docs/methods.md). Each concept is encoded like a prompt: wrapped in the pipeline's
prompt template, encoded by the Llama text encoder, cropped, and refined by the transformer's
token refiner (``context_embedder``, which depends on the timestep, so it reruns at every
transformer call); the refined rows of the concept's own tokens are reduced to one vector
(``first`` / ``mean``). In every double-stream block the concepts are then updated with the
prompt stream's weights: ``norm1_context`` / ``norm2_context`` modulation and gates, the added
q/k/v projections and q/k norms, ``to_add_out`` and ``ff_context``. Concepts attend to
``[concepts ; visual]`` only; nothing attends to them; only the ``C`` concept query rows are
computed.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vidinterp.adapter import Adapter, ConceptReduction, ConceptTokens, joint_site_specs, reduce_concept_rows
from vidinterp.concept_stream import AdaNormZeroModulation, ConceptStreamSpec
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

from ._mmdit import MMDIT_PROJECTIONS

__all__ = ["HunyuanVideoAdapter", "refined_concepts"]

#: ``HunyuanVideoPipeline.check_inputs`` requires pixel heights and widths divisible by this.
PIPELINE_PIXEL_MULTIPLE = 16
#: Reference geometry of the IMAP HunyuanVideo experiments (frames, height, width) in pixels,
#: the default for models whose config does not name a ``native_geometry``.
REFERENCE_GEOMETRY = (49, 480, 720)


def refined_concepts(transformer: nn.Module, concepts: ConceptTokens, timestep: torch.Tensor,
                     like: torch.Tensor) -> torch.Tensor:
    """The concepts entering the double-stream blocks of a call: each concept's templated
    prompt (``concepts.extras``: Llama ``prompt_embeds`` ``[C, T, text_dim]``, ``[C, T]`` mask,
    token ``positions``) refined by the transformer's token refiner at the call's ``timestep``
    (``[B_c]``), its rows reduced to one vector, then ``concepts.padding`` zero rows: ``[B_c,
    C + padding, dim]`` (padded concept slots enter the blocks as zero vectors)."""
    extras = concepts.extras
    batch, count = timestep.shape[0], len(concepts.names)
    embeds = extras["prompt_embeds"].to(device=like.device, dtype=like.dtype).repeat(batch, 1, 1)
    mask = extras["prompt_attention_mask"].to(device=like.device, dtype=like.dtype).repeat(batch, 1)
    refined = transformer.context_embedder(embeds, timestep.repeat_interleave(count), mask)
    with warnings.catch_warnings():  # encode_concepts already warned about multi-token concepts
        warnings.simplefilter("ignore")
        rows = [reduce_concept_rows(part, extras["positions"], concepts.names, concepts.pieces, concepts.reduction)
                for part in refined.split(count)]
    hidden = torch.stack(rows)
    return torch.cat([hidden, hidden.new_zeros(batch, concepts.padding, hidden.shape[-1])], dim=1)


@register_adapter
class HunyuanVideoAdapter(Adapter):
    family = "hunyuan_video"
    transformer_class_names = ("HunyuanVideoTransformer3DModel",)
    default_renoise_fraction = 2 / 3  # reference: step 20 of 30
    default_renoise_guidance = None  # embedded guidance: keep the pipeline default
    token_order = "visual_first"

    def __init__(self, pipe) -> None:
        from diffusers import HunyuanVideoPipeline

        if not isinstance(pipe, HunyuanVideoPipeline):
            raise TypeError(
                f"the hunyuan_video adapter supports HunyuanVideoPipeline (text-to-video); got "
                f"{type(pipe).__name__} (image-to-video variants are not implemented)"
            )
        super().__init__(pipe)

    @classmethod
    def supports(cls, transformer: nn.Module) -> bool:
        """Text-to-video transformers only (no ``image_condition_type``)."""
        return super().supports(transformer) and transformer.config.get("image_condition_type") is None

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(
            self.transformer, [("transformer_blocks", "attn", True), ("single_transformer_blocks", "attn", False)]
        )

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """Visual tokens first, then the ``T`` prompt slots; as the stock model, each row
        attends to the first ``sum(encoder_attention_mask)`` slots (:attr:`TokenLayout.prompt_mask`)."""
        batch, _, latent_frames, latent_height, latent_width = arguments["hidden_states"].shape
        prompt_mask = arguments["encoder_attention_mask"]
        text_length = prompt_mask.shape[1]
        lengths = prompt_mask.sum(dim=1, dtype=torch.int)
        mask = torch.arange(text_length, device=prompt_mask.device)[None] < lengths[:, None]
        return self.latent_layout(batch, latent_frames, latent_height, latent_width, text_length, pixel_frames, mask)

    # ---------------------------------------------------------------- text
    @property
    def prompt_template(self) -> dict[str, Any]:
        return self.call_default("prompt_template")

    @property
    def max_text_length(self) -> int:
        """Prompt slots ``T`` of a call: the pipeline's default ``max_sequence_length``."""
        return int(self.call_default("max_sequence_length"))

    def _crop_start(self) -> int:
        """Leading template tokens the pipeline crops, computed as ``_get_llama_prompt_embeds``
        does when the template names none."""
        crop_start = self.prompt_template.get("crop_start")
        if crop_start is None:
            ids = self.pipe.tokenizer(self.prompt_template["template"], padding="max_length",
                                      return_tensors="pt")["input_ids"]
            crop_start = ids.shape[-1] - 2
        return int(crop_start)

    def _concept_positions(self, concept: str) -> tuple[list[int], list[str]]:
        """Positions (in the cropped sequence) and pieces of the tokens of ``concept`` wrapped
        in the prompt template, found by character offsets."""
        tokenizer, template = self.pipe.tokenizer, self.prompt_template["template"]
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(f"locating concept tokens needs a fast tokenizer; got {type(tokenizer).__name__}")
        start = len(template[: template.index("{}")].replace("{{", "{").replace("}}", "}"))
        end = start + len(concept)
        crop_start = self._crop_start()
        encoding = tokenizer(template.format(concept), max_length=self.max_text_length + crop_start,
                             truncation=True, return_offsets_mapping=True)
        positions, pieces = [], []
        for index, (first, last) in enumerate(encoding["offset_mapping"]):
            if last > first and first < end and last > start and index - crop_start < self.max_text_length:
                positions.append(index - crop_start)
                pieces.append(tokenizer.convert_ids_to_tokens(encoding["input_ids"][index]))
        if any(position < 0 for position in positions):
            raise ValueError(
                f"concept {concept!r} falls inside the {crop_start} template tokens the pipeline crops; "
                f"the prompt template {template!r} does not fit this tokenizer"
            )
        return positions, pieces

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is encoded alone exactly as the pipeline encodes a prompt (template, Llama
        hidden states, crop, padding to ``max_sequence_length``). ``embeddings`` reduces the
        Llama rows of the concept's tokens; ``extras`` keeps the whole sequences
        (``prompt_embeds`` ``[C, T, text_dim]``, ``prompt_attention_mask`` ``[C, T]``) and the
        token ``positions`` for the token refiner, which the concept stream runs per call."""
        names = list(concepts)
        located = [self._concept_positions(concept) for concept in names]
        positions = [places for places, _ in located]
        pieces = [parts for _, parts in located]
        with torch.no_grad():
            prompt_embeds, attention_mask = self.pipe._get_llama_prompt_embeds(
                names, self.prompt_template, device=self.device, max_sequence_length=self.max_text_length
            )
        embeddings = reduce_concept_rows(prompt_embeds, positions, names, pieces, reduction)
        extras = {"prompt_embeds": prompt_embeds, "prompt_attention_mask": attention_mask, "positions": positions}
        return ConceptTokens(names, embeddings, pieces, reduction, extras)

    def concept_stream(self, concepts: ConceptTokens) -> ConceptStreamSpec:
        """Concepts enter refined by the token refiner at each call's timestep
        (:func:`refined_concepts`; lazily, at the first double-stream block, so the
        transformer's own ``context_embedder`` call stays first in execution order for
        nnsight), then the double-stream blocks update them like the prompt tokens."""
        transformer = self.transformer

        def enter(arguments: dict[str, Any], rows: slice, like: torch.Tensor) -> torch.Tensor:
            timestep = arguments["timestep"].reshape(-1).expand(arguments["hidden_states"].shape[0])[rows]
            return refined_concepts(transformer, concepts, timestep, like)

        return ConceptStreamSpec(enter=enter, projections=MMDIT_PROJECTIONS, modulation=AdaNormZeroModulation())

    # ---------------------------------------------------------------- geometry
    @property
    def prompt_tokens(self) -> int:
        return self.max_text_length

    def geometry(self) -> Geometry:
        """``native_geometry`` from the transformer config when present (tiny pipelines record
        theirs), else the reference geometry, 49 frames at 480x720; heights and widths also a
        multiple of the pipeline's 16."""
        config = self.transformer.config
        native = tuple(int(v) for v in config.get("native_geometry", REFERENCE_GEOMETRY))
        return Geometry(model="HunyuanVideo", native=native, temporal_compression=self.temporal_compression,
                        spatial_compression=self.spatial_compression, patch=int(config.patch_size),
                        temporal_patch=int(config.patch_size_t), pixel_multiple=PIPELINE_PIXEL_MULTIPLE)

    # ---------------------------------------------------------------- running
    def cfg_batched(self, guidance_scale: float) -> bool:
        """Never: ``guidance_scale`` is embedded guidance; true CFG runs as a separate call."""
        return False

    def unconditional_branch(self, scale: float) -> dict[str, Any]:
        """True CFG (``true_cfg_scale``, with a negative prompt): ``guidance_scale`` is embedded."""
        return {"true_cfg_scale": scale}

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The pipeline's schedule: sigmas ``linspace(1, 0, n + 1)[:-1]``, shifted by the scheduler."""
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.pipe.scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        return self.pipe.scheduler.timesteps.clone()

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"num_frames": num_frames, "height": height, "width": width,
                "max_sequence_length": self.max_text_length}

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[frames, 3, H, W]`` in ``[-1, 1]`` -> float32 latents ``[1, C, F, h, w]`` times the
        VAE's ``scaling_factor`` (the pipeline divides by it before decoding)."""
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample(generator)
        return (latents * vae.config.scaling_factor).float()

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Calls the transformer as the pipeline does: one conditional call per step with
        ``guidance_scale`` as embedded guidance (times 1000). HunyuanVideo has no batched CFG,
        so ``negative_prompt`` is unused (the pipeline needs ``true_cfg_scale`` for it)."""
        if negative_prompt is not None:
            warnings.warn(
                "HunyuanVideo renoising uses embedded guidance only; negative_prompt is ignored "
                "(the pipeline applies it only with true_cfg_scale > 1)",
                stacklevel=2,
            )
        pipe, transformer = self.pipe, self.transformer
        dtype = self.dtype
        prompt_embeds, pooled_embeds, prompt_mask = pipe.encode_prompt(
            prompt=prompt, prompt_template=self.prompt_template, device=self.device,
            max_sequence_length=self.max_text_length,
        )
        prompt_embeds, pooled_embeds, prompt_mask = (
            prompt_embeds.to(dtype), pooled_embeds.to(dtype), prompt_mask.to(dtype)
        )
        batch = latents.shape[0]
        guidance = torch.tensor([guidance_scale] * batch, dtype=dtype, device=self.device) * 1000.0

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            with transformer.cache_context("cond"):
                return transformer(
                    hidden_states=current.to(dtype),
                    timestep=timestep.expand(batch).to(current.dtype),
                    encoder_hidden_states=prompt_embeds,
                    encoder_attention_mask=prompt_mask,
                    pooled_projections=pooled_embeds,
                    guidance=guidance,
                    return_dict=False,
                )[0]

        return call
