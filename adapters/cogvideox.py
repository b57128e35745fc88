"""CogVideoX (2B, 5B, 1.5, image-to-video): sites, concept stream, geometry, pipelines.

Token order of a joint-attention call: prompt tokens first (``T`` = the transformer's
``max_text_seq_length``, padded slots included: CogVideoX attends to every slot), then the
``F*h*w`` visual tokens, frame-major. Rotary (5B, 1.5) applies to visual q/k only. CFG runs in
one batched call: rows ``[0, B/2)`` unconditional, ``[B/2, B)`` conditional.

Concept stream (docs/methods.md): concept tokens are projected by ``patch_embed.text_proj`` and
updated in every block with the prompt stream's weights: the text half of ``norm1``/``norm2``
modulation (shift, scale, gate), the shared q/k/v/out projections and q/k norms, and the shared
feed-forward. They attend to concepts and visual tokens only; nothing attends to them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

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
    word_pieces,
)
from vidinterp.layout import TokenLayout, causal_frame_spans
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteProcessor, SiteSpec

__all__ = ["CogVideoXAdapter", "CogVideoXSiteProcessor", "CogVideoXConceptStream"]


def _heads(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """``[batch, tokens, heads*head_dim]`` -> ``[batch, heads, tokens, head_dim]``."""
    return tensor.view(batch, -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


class CogVideoXConceptStream:
    """Running state of the concept tokens through the blocks of one transformer call.

    ``hidden`` is ``[analysed_batch, C, dim]``; it restarts from the projected concept
    embeddings at every transformer call (every denoising step).
    """

    def __init__(self, transformer: nn.Module, embeddings: torch.Tensor) -> None:
        self.transformer = transformer
        self.embeddings = embeddings
        self.hidden: torch.Tensor | None = None
        self.attention_input: torch.Tensor | None = None
        self.attention_output: torch.Tensor | None = None
        self._gate: torch.Tensor | None = None
        self._temb: torch.Tensor | None = None

    def start(self, analysed_batch: int, like: torch.Tensor) -> None:
        embeddings = self.embeddings.to(device=like.device, dtype=like.dtype)
        projected = self.transformer.patch_embed.text_proj(embeddings)
        self.hidden = projected.unsqueeze(0).expand(analysed_batch, -1, -1)

    @staticmethod
    def _text_modulation(norm: nn.Module, temb: torch.Tensor):
        _, _, _, shift, scale, gate = norm.linear(norm.silu(temb)).chunk(6, dim=1)
        return shift[:, None], scale[:, None], gate[:, None]

    def before_block(self, block: nn.Module, temb: torch.Tensor) -> None:
        shift, scale, gate = self._text_modulation(block.norm1, temb)
        self.attention_input = block.norm1.norm(self.hidden) * (1 + scale) + shift
        self._gate, self._temb = gate, temb

    def after_block(self, block: nn.Module) -> None:
        hidden = self.hidden + self._gate * self.attention_output
        shift, scale, gate = self._text_modulation(block.norm2, self._temb)
        hidden = hidden + gate * block.ff(block.norm2.norm(hidden) * (1 + scale) + shift)
        self.hidden = hidden
        self.attention_input = self.attention_output = self._gate = self._temb = None


class CogVideoXSiteProcessor(SiteProcessor):
    """``CogVideoXAttnProcessor2_0`` with hook points and the concept stream."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = _heads(attn.to_q(hidden_states), batch_size, attn.heads)
        key = _heads(attn.to_k(hidden_states), batch_size, attn.heads)
        value = _heads(attn.to_v(hidden_states), batch_size, attn.heads)
        head_dim = query.shape[-1]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        query, key, value = self.hook_q(query), self.hook_k(key), self.hook_v(value)

        output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        output = self.hook_z(output)

        concept_tensors = {}
        if self.runtime.concepts_active:
            concept_tensors = self._concept_attention(attn, key, value, text_seq_length)
        parts = {"visual": slice(text_seq_length, sequence_length), "prompt": slice(0, text_seq_length)}
        self.report(
            {"q": query, "k": key, "v": value, "z": output},
            {name: parts for name in ("q", "k", "v", "z")},
            concept_tensors,
        )

        hidden_states = output.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states

    def _concept_attention(
        self, attn: nn.Module, key: torch.Tensor, value: torch.Tensor, text_seq_length: int
    ) -> dict[str, torch.Tensor]:
        """Only the ``C`` concept query rows: concepts attend to ``[concepts ; visual]``."""
        stream: CogVideoXConceptStream = self.runtime.concept_state
        rows = self.runtime.layout.analysed_rows
        concepts = stream.attention_input
        batch = concepts.shape[0]
        query_c = _heads(attn.to_q(concepts), batch, attn.heads)
        key_c = _heads(attn.to_k(concepts), batch, attn.heads)
        value_c = _heads(attn.to_v(concepts), batch, attn.heads)
        if attn.norm_q is not None:
            query_c = attn.norm_q(query_c)
        if attn.norm_k is not None:
            key_c = attn.norm_k(key_c)
        query_c, key_c, value_c = self.hook_concept_q(query_c), self.hook_concept_k(key_c), self.hook_concept_v(value_c)
        keys = torch.cat([key_c, key[rows, :, text_seq_length:]], dim=2)
        values = torch.cat([value_c, value[rows, :, text_seq_length:]], dim=2)
        output_c = self.hook_concept_z(F.scaled_dot_product_attention(query_c, keys, values))
        merged = output_c.transpose(1, 2).reshape(batch, -1, attn.heads * output_c.shape[-1])
        stream.attention_output = attn.to_out[1](attn.to_out[0](merged))
        return {"q": query_c, "k": key_c, "v": value_c, "z": output_c}


@register_adapter
class CogVideoXAdapter(Adapter):
    family = "cogvideox"
    transformer_class_names = ("CogVideoXTransformer3DModel",)
    default_renoise_fraction = 0.6  # reference: step 30 of 50

    # ---------------------------------------------------------------- sites
    def site_specs(self) -> list[SiteSpec]:
        return joint_site_specs(self.transformer, [("transformer_blocks", "attn1", True)])

    def make_processor(self, spec: SiteSpec, original: object, runtime: Runtime) -> SiteProcessor:
        return CogVideoXSiteProcessor(spec, original, runtime)

    def register_hooks(self, runtime: Runtime) -> list[RemovableHandle]:
        def before_transformer(module, args, kwargs):
            latents = call_argument(module, args, kwargs, "hidden_states")
            prompt = call_argument(module, args, kwargs, "encoder_hidden_states")
            batch, latent_frames, _, latent_height, latent_width = latents.shape
            layout = self._layout(batch, latent_frames, latent_height, latent_width, prompt.shape[1],
                                  runtime.cfg_batched, runtime.pixel_frames)
            runtime.begin_call(layout, conditional=True)
            if runtime.concepts_active:
                runtime.concept_state.start(layout.analysed_batch, prompt)

        return call_hooks(self.transformer, runtime, before_transformer) + concept_block_hooks(
            list(self.transformer.transformer_blocks), runtime
        )

    # ---------------------------------------------------------------- text
    @property
    def max_text_length(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Each concept is encoded alone, exactly as the pipeline encodes a prompt (T5, padded
        to ``max_text_seq_length``), then reduced over its sub-tokens."""
        tokenizer = self.pipe.tokenizer
        ids_and_pieces = [word_pieces(tokenizer, concept) for concept in concepts]
        with torch.no_grad():
            hidden = self.pipe._get_t5_prompt_embeds(
                prompt=list(concepts), max_sequence_length=self.max_text_length, device=self.device
            )
        positions = [list(range(min(len(ids), self.max_text_length - 1))) for ids, _ in ids_and_pieces]
        pieces = [parts for _, parts in ids_and_pieces]
        embeddings = reduce_concept_rows(hidden, positions, list(concepts), pieces, reduction)
        return ConceptTokens(list(concepts), embeddings, pieces, reduction)

    def concept_state(self, concepts: ConceptTokens, prompt: str | None) -> CogVideoXConceptStream:
        return CogVideoXConceptStream(self.transformer, concepts.embeddings)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        """T5 tokens of the prompt, as the pipeline encodes it: the prompt sequence's first slots."""
        return locate_prompt_words(self.pipe.tokenizer, prompt, concepts, reduction, max_length=self.max_text_length,
                                   model="CogVideoX")

    # ---------------------------------------------------------------- geometry
    def default_geometry(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return (
            int(config.sample_frames),
            int(config.sample_height) * self.spatial_compression,
            int(config.sample_width) * self.spatial_compression,
        )

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        k = self.temporal_compression
        cell = self.spatial_compression * self.transformer.config.patch_size
        problems = []
        if num_frames < 1 or (num_frames - 1) % k:
            problems.append(f"num_frames must be {k}*n + 1 (e.g. {k * ((max(num_frames, 1) - 1) // k) + 1}), got {num_frames}")
        config = self.transformer.config
        native = {"height": config.sample_height * self.spatial_compression,
                  "width": config.sample_width * self.spatial_compression}
        for name, size in (("height", height), ("width", width)):
            if size < cell or size % cell:
                problems.append(f"{name} must be a positive multiple of {cell} pixels, got {size}")
            elif config.use_learned_positional_embeddings and size != native[name]:
                problems.append(f"{name} must be {native[name]} (learned positional embeddings), got {size}")
            elif config.patch_size_t and config.use_rotary_positional_embeddings and size > native[name]:
                problems.append(f"{name} must be at most {native[name]} (1.5 rotary grid), got {size}")
        if problems:
            default = self.default_geometry()
            raise ValueError(
                "invalid video geometry for CogVideoX: " + "; ".join(problems)
                + f" (this model's native geometry: {default[0]} frames at {default[1]}x{default[2]})"
            )

    def _latent_frames(self, pixel_frames: int) -> tuple[int, int]:
        """``(latent frames, leading padding)``: 1.5 models pad the latent frame count up to a
        multiple of ``patch_size_t`` with leading frames, as the pipeline does."""
        latent = (pixel_frames - 1) // self.temporal_compression + 1
        patch_t = self.transformer.config.patch_size_t or 1
        padding = (patch_t - latent % patch_t) % patch_t
        return latent + padding, padding

    def _layout(self, batch: int, latent_frames: int, latent_height: int, latent_width: int,
                text_length: int, cfg_batched: bool, pixel_frames: int | None) -> TokenLayout:
        patch = self.transformer.config.patch_size
        patch_t = self.transformer.config.patch_size_t or 1
        frames, height, width = latent_frames // patch_t, latent_height // patch, latent_width // patch
        padding = 0 if pixel_frames is None else self._latent_frames(pixel_frames)[1]
        cell = self.spatial_compression * patch
        return TokenLayout(
            frames=frames,
            height=height,
            width=width,
            visual=slice(text_length, text_length + frames * height * width),
            prompt=slice(0, text_length),
            concepts=0,
            batch=batch,
            analysed_rows=slice(batch // 2, batch) if cfg_batched else slice(0, batch),
            frame_spans=causal_frame_spans(frames, self.temporal_compression, patch_t, padding),
            pixels_per_token=(cell, cell),
        )

    def layout_for(self, num_frames: int, height: int, width: int, batch: int = 1) -> TokenLayout:
        self.check_geometry(num_frames, height, width)
        latent_frames, _ = self._latent_frames(num_frames)
        return self._layout(
            batch, latent_frames, height // self.spatial_compression, width // self.spatial_compression,
            self.max_text_length, cfg_batched=False, pixel_frames=num_frames,
        )

    # ---------------------------------------------------------------- running
    @property
    def _image_to_video(self) -> bool:
        return "ImageToVideo" in type(self.pipe).__name__

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "max_sequence_length": self.max_text_length,
        }

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        latents = latents.permute(0, 2, 1, 3, 4).to(self.dtype)
        _, padding = self._latent_frames(video.shape[0])
        # 1.5: lead with copies of the first latent frame, as many as the pipeline pads.
        return torch.cat([latents[:, :1]] * padding + [latents], dim=1)

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        pipe, transformer = self.pipe, self.transformer
        cfg = guidance_scale > 1.0
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=self.max_text_length, device=self.device, dtype=self.dtype,
        )
        if cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        _, latent_frames, _, latent_height, latent_width = latents.shape
        rotary = None
        if transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(
                latent_height * self.spatial_compression, latent_width * self.spatial_compression,
                latent_frames, self.device,
            )
        # Image-to-video: the first latent frame conditions, later frames are zero (as the
        # pipeline pads an encoded image); the transformer sees [latents ; image_latents].
        image_latents = None
        if self._image_to_video:
            image_latents = torch.cat([latents[:, :1], torch.zeros_like(latents[:, 1:])], dim=1)
        ofs = None
        if transformer.config.ofs_embed_dim is not None:
            ofs = latents.new_full((1,), 2.0)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([current] * 2) if cfg else current
            model_input = pipe.scheduler.scale_model_input(model_input, timestep)
            if image_latents is not None:
                conditioning = torch.cat([image_latents] * 2) if cfg else image_latents
                model_input = torch.cat([model_input, conditioning], dim=2)
            output = transformer(
                hidden_states=model_input,
                encoder_hidden_states=prompt_embeds,
                timestep=timestep.expand(model_input.shape[0]),
                ofs=ofs,
                image_rotary_emb=rotary,
                return_dict=False,
            )[0].float()
            if cfg:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            return output

        return call

    def scheduler_step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        if "old_pred_original_sample" in inspect.signature(scheduler.step).parameters:
            raise NotImplementedError(
                "renoising over several steps needs CogVideoXDDIMScheduler; the DPM scheduler's "
                "multistep state is not supported: use num_renoise_steps=1 or swap the scheduler"
            )
        return scheduler.step(model_output, timestep, latents, return_dict=False)[0]
