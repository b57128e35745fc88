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
are real. Rotary embeddings apply to visual q/k only.

Guidance. HunyuanVideo is guidance-distilled: ``guidance_scale`` is embedded into the timestep
conditioning, and the pipeline never batches CFG branches. "True" CFG (``true_cfg_scale > 1``
with a negative prompt) runs a second, separate transformer call per step inside
``transformer.cache_context("uncond")``; such calls are marked unconditional and not analysed.

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

import inspect
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from vidinterp.adapter import (
    Adapter,
    ConceptReduction,
    ConceptTokens,
    call_argument,
    call_hooks,
    concept_block_hooks,
    joint_site_specs,
    reduce_concept_rows,
)
from vidinterp.layout import TokenLayout, causal_frame_spans
from vidinterp.registry import register_adapter
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteProcessor, SiteSpec

__all__ = ["HunyuanVideoAdapter", "HunyuanVideoSiteProcessor", "HunyuanVideoConceptStream"]

#: ``HunyuanVideoPipeline.check_inputs`` requires pixel heights and widths divisible by this.
PIPELINE_PIXEL_MULTIPLE = 16
#: Reference geometry of the IMAP HunyuanVideo experiments (frames, height, width) in pixels,
#: the default for models whose config does not name a ``native_geometry``.
REFERENCE_GEOMETRY = (49, 480, 720)


class HunyuanVideoConceptStream:
    """Running state of the concept tokens through the double-stream blocks of one call.

    Holds each concept encoded as its own templated prompt (``prompt_embeds`` ``[C, T,
    text_dim]`` Llama outputs, ``attention_mask`` ``[C, T]``) and the positions of the
    concept's tokens in that sequence. At every transformer call :meth:`begin` resets the
    stream; the first double block then refines the concept prompts with the transformer's
    token refiner at the call's timestep and reduces the concept rows to ``hidden``
    (``[analysed_batch, C, dim]``), which the blocks update. (Refining there, after the
    transformer's own ``context_embedder`` call, keeps that call first in execution order for
    nnsight.)
    """

    def __init__(
        self,
        transformer: nn.Module,
        prompt_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: list[list[int]],
        names: list[str],
        pieces: list[list[str]],
        reduction: ConceptReduction,
        padding: int = 0,
    ) -> None:
        self.transformer = transformer
        self.padding = padding
        self.prompt_embeds = prompt_embeds
        self.attention_mask = attention_mask
        self.positions = positions
        self.names = names
        self.pieces = pieces
        self.reduction = reduction
        self.hidden: torch.Tensor | None = None
        self.attention_input: torch.Tensor | None = None
        self.attention_output: torch.Tensor | None = None
        self._timestep: torch.Tensor | None = None
        self._modulation: list[torch.Tensor] | None = None

    def begin(self, timestep: torch.Tensor) -> None:
        """Restart the stream for a transformer call; ``timestep`` is ``[analysed_batch]``."""
        self.hidden = None
        self._timestep = timestep

    def _refine(self, like: torch.Tensor) -> torch.Tensor:
        """Concept embeddings after the token refiner, then ``padding`` zero rows (padded
        concept slots enter the double-stream blocks as zero vectors): ``[analysed_batch,
        C + padding, dim]``."""
        batch, count = self._timestep.shape[0], self.prompt_embeds.shape[0]
        embeds = self.prompt_embeds.to(device=like.device, dtype=like.dtype).repeat(batch, 1, 1)
        mask = self.attention_mask.to(device=like.device, dtype=like.dtype).repeat(batch, 1)
        refined = self.transformer.context_embedder(embeds, self._timestep.repeat_interleave(count), mask)
        with warnings.catch_warnings():  # encode_concepts already warned about multi-token concepts
            warnings.simplefilter("ignore")
            rows = [
                reduce_concept_rows(part, self.positions, self.names, self.pieces, self.reduction)
                for part in refined.split(count)
            ]
        hidden = torch.stack(rows)
        return torch.cat([hidden, hidden.new_zeros(batch, self.padding, hidden.shape[-1])], dim=1)

    def before_block(self, block: nn.Module, temb: torch.Tensor) -> None:
        """Prompt-stream input modulation of the concepts (``temb``: conditional rows)."""
        if self.hidden is None:
            self.hidden = self._refine(temb)
        self.attention_input, *self._modulation = block.norm1_context(self.hidden, emb=temb)

    def after_block(self, block: nn.Module) -> None:
        """Gated residual of the concept attention output, then the prompt stream's MLP."""
        gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation
        hidden = self.hidden + self.attention_output * gate_msa.unsqueeze(1)
        normed = block.norm2_context(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.hidden = hidden + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        self.attention_input = self.attention_output = self._modulation = None


class HunyuanVideoSiteProcessor(SiteProcessor):
    """``HunyuanVideoAttnProcessor2_0`` with hook points (and the concept stream on
    double-stream sites). Same operations in the same order as the stock processor; tensors
    pass the hook points in the head layout ``[batch, heads, tokens, head_dim]`` and are
    transposed back to the stock layout, so outputs are bit-identical."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        if encoder_hidden_states is None:
            raise ValueError(f"site {self.spec.name} expects prompt tokens (encoder_hidden_states), got None")
        visual_tokens, text_tokens = hidden_states.shape[1], encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # q/k/v [batch, tokens, heads, head_dim] (the stock layout), q/k norms, rotary on visual.
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-text_tokens], image_rotary_emb, sequence_dim=1),
                                   query[:, -text_tokens:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_tokens], image_rotary_emb, sequence_dim=1),
                                 key[:, -text_tokens:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if not single_stream:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        # Hook points see [batch, heads, tokens, head_dim]; transposing back restores the strides.
        query = self.hook_q(query.transpose(1, 2))
        key = self.hook_k(key.transpose(1, 2))
        value = self.hook_v(value.transpose(1, 2))
        output = dispatch_attention_fn(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=getattr(self.original, "_attention_backend", None),
            parallel_config=getattr(self.original, "_parallel_config", None),
        )
        output = self.hook_z(output.transpose(1, 2))

        concept_tensors = {}
        if self.spec.concept_stream and self.runtime.concepts_active:
            concept_tensors = self._concept_attention(attn, key, value, visual_tokens)
        parts = {"visual": slice(0, visual_tokens), "prompt": slice(visual_tokens, visual_tokens + text_tokens)}
        self.report(
            {"q": query, "k": key, "v": value, "z": output},
            {name: parts for name in ("q", "k", "v", "z")},
            concept_tensors,
        )

        hidden_states = output.transpose(1, 2).flatten(2, 3).to(query.dtype)
        hidden_states, encoder_hidden_states = hidden_states[:, :-text_tokens], hidden_states[:, -text_tokens:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states

    def _concept_attention(
        self, attn: nn.Module, key: torch.Tensor, value: torch.Tensor, visual_tokens: int
    ) -> dict[str, torch.Tensor]:
        """Only the ``C`` concept query rows, with the prompt stream's projections; concepts
        attend to ``[concepts ; visual]``. ``key``/``value``: ``[batch, heads, tokens, d]``."""
        stream: HunyuanVideoConceptStream = self.runtime.concept_state
        rows = self.runtime.layout.analysed_rows
        concepts = stream.attention_input
        query_c = attn.add_q_proj(concepts).unflatten(2, (attn.heads, -1))
        key_c = attn.add_k_proj(concepts).unflatten(2, (attn.heads, -1))
        value_c = attn.add_v_proj(concepts).unflatten(2, (attn.heads, -1))
        if attn.norm_added_q is not None:
            query_c = attn.norm_added_q(query_c)
        if attn.norm_added_k is not None:
            key_c = attn.norm_added_k(key_c)
        query_c = self.hook_concept_q(query_c.transpose(1, 2))
        key_c = self.hook_concept_k(key_c.transpose(1, 2))
        value_c = self.hook_concept_v(value_c.transpose(1, 2))
        keys = torch.cat([key_c, key[rows, :, :visual_tokens]], dim=2)
        values = torch.cat([value_c, value[rows, :, :visual_tokens]], dim=2)
        output_c = self.hook_concept_z(F.scaled_dot_product_attention(query_c, keys, values))
        stream.attention_output = attn.to_add_out(output_c.transpose(1, 2).flatten(2, 3).to(query_c.dtype))
        return {"q": query_c, "k": key_c, "v": value_c, "z": output_c}


class _CacheContextName:
    """Follows the name of the transformer's current ``cache_context(name)``.

    ``HunyuanVideoPipeline`` wraps its conditional call in ``transformer.cache_context("cond")``
    and the true-CFG negative call in ``cache_context("uncond")``; this shadows the method on the
    instance (``remove`` restores it) to record the name.
    """

    def __init__(self, transformer: nn.Module) -> None:
        self.transformer = transformer
        self.name: str | None = None
        original = transformer.cache_context

        @contextmanager
        def cache_context(name: str, **kwargs: Any) -> Iterator[None]:
            previous, self.name = self.name, name
            try:
                with original(name, **kwargs):
                    yield
            finally:
                self.name = previous

        self._patched = cache_context
        transformer.cache_context = cache_context

    def remove(self) -> None:
        if self.transformer.__dict__.get("cache_context") is self._patched:
            del self.transformer.cache_context


@register_adapter
class HunyuanVideoAdapter(Adapter):
    family = "hunyuan_video"
    transformer_class_names = ("HunyuanVideoTransformer3DModel",)
    default_renoise_fraction = 2 / 3  # reference: step 20 of 30
    default_renoise_guidance = None  # embedded guidance: keep the pipeline default

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

    # ---------------------------------------------------------------- sites
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(
            self.transformer, [("transformer_blocks", "attn", True), ("single_transformer_blocks", "attn", False)]
        )

    def make_processor(self, spec: SiteSpec, original: object, runtime: Runtime) -> SiteProcessor:
        return HunyuanVideoSiteProcessor(spec, original, runtime)

    def register_hooks(self, runtime: Runtime) -> list[RemovableHandle]:
        transformer = self.transformer
        call_name = _CacheContextName(transformer)

        def before_transformer(module, args, kwargs):
            latents = call_argument(module, args, kwargs, "hidden_states")
            prompt_mask = call_argument(module, args, kwargs, "encoder_attention_mask")
            batch, _, latent_frames, latent_height, latent_width = latents.shape
            layout = self._layout(batch, latent_frames, latent_height, latent_width, prompt_mask)
            runtime.begin_call(layout, conditional=call_name.name != "uncond")
            if runtime.concepts_active:
                timestep = call_argument(module, args, kwargs, "timestep")
                runtime.concept_state.begin(timestep.reshape(-1).expand(batch)[layout.analysed_rows])

        return [call_name, *call_hooks(transformer, runtime, before_transformer),
                *concept_block_hooks(list(transformer.transformer_blocks), runtime)]

    # ---------------------------------------------------------------- text
    def _call_default(self, name: str) -> Any:
        """Default of a ``pipe(...)`` argument (the prompt template, ``max_sequence_length``)."""
        return inspect.signature(self.pipe.__call__).parameters[name].default

    @property
    def prompt_template(self) -> dict[str, Any]:
        return self._call_default("prompt_template")

    @property
    def max_text_length(self) -> int:
        """Prompt slots ``T`` of a call: the pipeline's default ``max_sequence_length``."""
        return int(self._call_default("max_sequence_length"))

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

    def concept_state(self, concepts: ConceptTokens, prompt: str | None) -> HunyuanVideoConceptStream:
        extras = concepts.extras
        return HunyuanVideoConceptStream(
            self.transformer, extras["prompt_embeds"], extras["prompt_attention_mask"], extras["positions"],
            concepts.names, concepts.pieces, concepts.reduction, padding=concepts.padding,
        )

    # ---------------------------------------------------------------- geometry
    @property
    def pixel_multiple(self) -> int:
        """Heights and widths must be multiples of this: one token cell (VAE compression x
        patch size) and the pipeline's own multiple of 16."""
        return math.lcm(PIPELINE_PIXEL_MULTIPLE, self.spatial_compression * self.transformer.config.patch_size)

    def default_geometry(self) -> tuple[int, int, int]:
        """``native_geometry`` from the transformer config when present (tiny pipelines record
        theirs), else the reference geometry, 49 frames at 480x720."""
        return tuple(int(v) for v in self.transformer.config.get("native_geometry", REFERENCE_GEOMETRY))

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        k, patch_t = self.temporal_compression, self.transformer.config.patch_size_t
        problems = []
        if num_frames < 1 or (num_frames - 1) % k:
            nearest = k * ((max(num_frames, 1) - 1) // k) + 1
            problems.append(f"num_frames must be {k}*n + 1 (e.g. {nearest}), got {num_frames}")
        elif ((num_frames - 1) // k + 1) % patch_t:
            latent_frames = (num_frames - 1) // k + 1
            nearest = k * (patch_t * math.ceil(latent_frames / patch_t) - 1) + 1
            problems.append(
                f"num_frames must give a latent frame count (num_frames - 1) / {k} + 1 divisible by "
                f"patch_size_t={patch_t} (e.g. {nearest}), got {num_frames} -> {latent_frames} latent frames"
            )
        cell = self.pixel_multiple
        for name, size in (("height", height), ("width", width)):
            if size < cell or size % cell:
                problems.append(f"{name} must be a positive multiple of {cell} pixels, got {size}")
        if problems:
            default = self.default_geometry()
            raise ValueError(
                "invalid video geometry for HunyuanVideo: " + "; ".join(problems)
                + f" (this model's default geometry: {default[0]} frames at {default[1]}x{default[2]})"
            )

    def _layout(self, batch: int, latent_frames: int, latent_height: int, latent_width: int,
                prompt_mask: torch.Tensor | None, text_length: int | None = None) -> TokenLayout:
        """Layout of a call on ``[batch, C, latent_frames, latent_height, latent_width]``
        latents; ``prompt_mask`` is the call's ``encoder_attention_mask`` ``[batch, T]``."""
        config = self.transformer.config
        frames = latent_frames // config.patch_size_t
        height, width = latent_height // config.patch_size, latent_width // config.patch_size
        visual = frames * height * width
        mask = None
        if prompt_mask is not None:
            # As the stock model: the first sum(mask) prompt slots of each row are attended.
            text_length = prompt_mask.shape[1]
            lengths = prompt_mask.sum(dim=1, dtype=torch.int)
            mask = torch.arange(text_length, device=prompt_mask.device)[None] < lengths[:, None]
        cell = self.spatial_compression * config.patch_size
        return TokenLayout(
            frames=frames,
            height=height,
            width=width,
            visual=slice(0, visual),
            prompt=slice(visual, visual + text_length),
            concepts=0,
            batch=batch,
            analysed_rows=slice(0, batch),
            prompt_mask=mask,
            frame_spans=causal_frame_spans(frames, self.temporal_compression, config.patch_size_t),
            pixels_per_token=(cell, cell),
        )

    def layout_for(self, num_frames: int, height: int, width: int, batch: int = 1) -> TokenLayout:
        self.check_geometry(num_frames, height, width)
        return self._layout(
            batch, (num_frames - 1) // self.temporal_compression + 1, height // self.spatial_compression,
            width // self.spatial_compression, prompt_mask=None, text_length=self.max_text_length,
        )

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
