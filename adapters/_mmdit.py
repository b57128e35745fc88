"""Shared machinery of the image MM-DiT adapters (Flux, Stable Diffusion 3).

Both families have dual-stream ("joint") blocks with the same prompt-stream parts:
``norm1_context`` (adaptive norm with gates, ``AdaLayerNormZero``; SD3's last block:
``AdaLayerNormContinuous`` without gates), ``attn.add_{q,k,v}_proj``, ``attn.norm_added_{q,k}``,
``attn.to_add_out``, ``norm2_context`` and ``ff_context``. This module holds

* :class:`MMDiTConceptStream` and :func:`concept_attention`: the concept stream of those
  blocks (docs/methods.md, "Concept stream"), run with the prompt stream's weights;
* :class:`ImageMMDiTAdapter`: an image as a video of one frame (geometry, layout, VAE encoding
  with the pipeline's shift and scaling, the flow-matching schedule as the pipeline sets it,
  the transformer/block hooks).

Files starting with an underscore are not registered as adapters.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from vidinterp.adapter import Adapter, ConceptTokens, call_hooks, concept_block_hooks
from vidinterp.layout import TokenLayout
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteProcessor

__all__ = [
    "MMDiTConceptStream",
    "ImageMMDiTAdapter",
    "to_heads",
    "concept_attention",
]


def to_heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[batch, tokens, heads*head_dim]`` -> ``[batch, heads, tokens, head_dim]``."""
    return tensor.unflatten(-1, (-1, head_dim)).transpose(1, 2)


class MMDiTConceptStream:
    """Running state of the concept tokens through the dual-stream blocks of one transformer call.

    ``hidden`` is ``[analysed_batch, C, dim]``: the concept embeddings through the
    transformer's ``context_embedder`` (the prompt tokens' projection), restarted at every
    transformer call (every denoising step). Per block, :meth:`before_block` applies the prompt
    stream's ``norm1_context`` modulation, the site processor computes the concept attention
    (:func:`concept_attention`, setting ``attention_output``), and :meth:`after_block` adds the
    gated attention output and the gated ``ff_context`` MLP, exactly as the block updates its
    prompt tokens. A ``context_pre_only`` block (SD3's last) ends the prompt stream: the concepts
    still attend (their per-head outputs are observed) but are not updated.
    """

    def __init__(self, transformer: nn.Module, embeddings: torch.Tensor) -> None:
        self.transformer = transformer
        self.embeddings = embeddings
        self.hidden: torch.Tensor | None = None
        self.attention_input: torch.Tensor | None = None
        self.attention_output: torch.Tensor | None = None
        self._modulation: tuple[torch.Tensor, ...] | None = None

    def start(self, analysed_batch: int, like: torch.Tensor) -> None:
        """Project the ``[C, text_dim]`` embeddings like prompt tokens (``like``: the call's
        ``encoder_hidden_states``, for device and dtype)."""
        embeddings = self.embeddings.to(device=like.device, dtype=like.dtype)
        projected = self.transformer.context_embedder(embeddings)
        self.hidden = projected.unsqueeze(0).expand(analysed_batch, -1, -1)

    def before_block(self, block: nn.Module, temb: torch.Tensor) -> None:
        """``temb``: ``[analysed_batch, dim]``, the block's conditioning embedding rows."""
        if getattr(block, "context_pre_only", False):
            self.attention_input = block.norm1_context(self.hidden, temb)
            self._modulation = None
        else:
            self.attention_input, *modulation = block.norm1_context(self.hidden, emb=temb)
            self._modulation = tuple(modulation)

    def after_block(self, block: nn.Module) -> None:
        if self._modulation is not None:
            gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation
            hidden = self.hidden + gate_msa.unsqueeze(1) * self.attention_output
            normed = block.norm2_context(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            hidden = hidden + gate_mlp.unsqueeze(1) * block.ff_context(normed)
            if hidden.dtype == torch.float16:
                hidden = hidden.clip(-65504, 65504)
            self.hidden = hidden
        self.attention_input = self.attention_output = self._modulation = None


def _context_projections(attn: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The prompt stream's q/k/v projections of ``hidden`` (fused or not)."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
        return attn.to_added_qkv(hidden).chunk(3, dim=-1)
    return attn.add_q_proj(hidden), attn.add_k_proj(hidden), attn.add_v_proj(hidden)


def concept_attention(
    processor: SiteProcessor, attn: nn.Module, visual_key: torch.Tensor, visual_value: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The concept stream's attention at one dual-stream site: only the ``C`` concept query rows.

    Concepts are projected with the prompt stream's ``add_{q,k,v}_proj`` and ``norm_added_{q,k}``
    (no rotary: Flux gives prompt tokens position 0, an identity rotation) and attend to
    ``[concepts ; visual]``. Nothing attends to them, so the model's output is untouched.

    Args:
        processor: the site processor (its ``hook_concept_*`` points and runtime).
        attn: the attention module.
        visual_key, visual_value: ``[analysed_batch, heads, P, head_dim]`` visual keys
            (after q/k-norm and rotary) and values of the joint call.

    Returns:
        ``{"q", "k", "v", "z"}`` concept tensors ``[analysed_batch, heads, C, head_dim]``;
        sets the stream's ``attention_output`` (``[analysed_batch, C, dim]`` after
        ``to_add_out``; ``None`` in a ``context_pre_only`` block).
    """
    stream: MMDiTConceptStream = processor.runtime.concept_state
    head_dim = visual_key.shape[-1]
    query, key, value = (to_heads(t, head_dim) for t in _context_projections(attn, stream.attention_input))
    if attn.norm_added_q is not None:
        query = attn.norm_added_q(query)
    if attn.norm_added_k is not None:
        key = attn.norm_added_k(key)
    query = processor.hook_concept_q(query)
    key = processor.hook_concept_k(key)
    value = processor.hook_concept_v(value)
    keys = torch.cat([key, visual_key], dim=2)
    values = torch.cat([value, visual_value], dim=2)
    output = processor.hook_concept_z(F.scaled_dot_product_attention(query, keys, values))
    if attn.to_add_out is not None:
        stream.attention_output = attn.to_add_out(output.transpose(1, 2).flatten(2, 3).to(query.dtype))
    return {"q": query, "k": key, "v": value, "z": output}


class ImageMMDiTAdapter(Adapter):
    """Shared parts of the image MM-DiT adapters: an image is a video of one frame.

    Subclasses set :attr:`prompt_first` (token order of the joint sequence), implement
    :attr:`token_cell`, :attr:`prompt_tokens`, :meth:`_schedule_kwargs` and
    :meth:`_call_layout`, and everything model-specific of the :class:`Adapter` protocol.
    """

    #: ConceptAttention renoises at the middle of a short schedule (index 2 of 4, Flux and SD3).
    default_renoise_fraction = 0.5
    #: whether prompt tokens precede the visual tokens in the joint sequence (Flux) or follow
    #: them (SD3).
    prompt_first: ClassVar[bool]

    # ---------------------------------------------------------------- geometry
    @property
    @abstractmethod
    def token_cell(self) -> int:
        """Pixels per visual token side (VAE compression times patch size)."""

    @property
    @abstractmethod
    def prompt_tokens(self) -> int:
        """Prompt-token slots ``T`` of a call (padding included)."""

    @property
    def max_token_grid(self) -> int | None:
        """Largest token rows/columns the model accepts (``None``: no limit)."""
        return None

    def default_geometry(self) -> tuple[int, int, int]:
        size = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return (1, size, size)

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        cell, limit = self.token_cell, self.max_token_grid
        problems = []
        if num_frames != 1:
            problems.append(f"num_frames must be 1 (an image is a video of one frame), got {num_frames}")
        for name, size in (("height", height), ("width", width)):
            if size < cell or size % cell:
                problems.append(f"{name} must be a positive multiple of {cell} pixels, got {size}")
            elif limit is not None and size // cell > limit:
                problems.append(f"{name} must be at most {limit * cell} pixels ({limit} tokens), got {size}")
        if problems:
            default = self.default_geometry()
            raise ValueError(
                f"invalid image geometry for {self.family}: " + "; ".join(problems)
                + f" (this model's native geometry: {default[0]} frame at {default[1]}x{default[2]})"
            )

    def _layout(self, batch: int, grid_height: int, grid_width: int, text_length: int,
                cfg_batched: bool) -> TokenLayout:
        visual_tokens = grid_height * grid_width
        if self.prompt_first:
            prompt, visual = slice(0, text_length), slice(text_length, text_length + visual_tokens)
        else:
            visual, prompt = slice(0, visual_tokens), slice(visual_tokens, visual_tokens + text_length)
        return TokenLayout(
            frames=1,
            height=grid_height,
            width=grid_width,
            visual=visual,
            prompt=prompt,
            concepts=0,
            batch=batch,
            analysed_rows=slice(batch // 2, batch) if cfg_batched else slice(0, batch),
            frame_spans=((0, 0),),
            pixels_per_token=(self.token_cell, self.token_cell),
        )

    def layout_for(self, num_frames: int, height: int, width: int, batch: int = 1) -> TokenLayout:
        self.check_geometry(num_frames, height, width)
        return self._layout(batch, height // self.token_cell, width // self.token_cell, self.prompt_tokens,
                            cfg_batched=False)

    # ---------------------------------------------------------------- text
    def concept_state(self, concepts: ConceptTokens, prompt: str | None) -> MMDiTConceptStream:
        return MMDiTConceptStream(self.transformer, concepts.embeddings)

    # ---------------------------------------------------------------- running
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[1, 3, H, W]`` in ``[-1, 1]`` -> ``[1, C, H/s, W/s]`` latents, shifted and scaled as
        the pipeline expects (it decodes ``latents / scaling_factor + shift_factor``)."""
        if video.shape[0] != 1:
            raise ValueError(f"{self.family} encodes images: expected 1 frame, got {video.shape[0]}")
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return latents.to(self.dtype)

    @abstractmethod
    def _schedule_kwargs(self, num_inference_steps: int, visual_tokens: int) -> dict[str, Any]:
        """Keyword arguments the pipeline hands ``retrieve_timesteps`` (``sigmas``, ``mu``) for
        an image of ``visual_tokens`` tokens."""

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The schedule for the native geometry (see :meth:`timesteps_for`)."""
        return self.timesteps_for(num_inference_steps, self.default_geometry())

    def timesteps_for(self, num_inference_steps: int, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The schedule as the pipeline sets it for an image of pixel ``geometry``
        ``(1, height, width)``: the resolution-dependent shift ``mu`` matters when the scheduler
        uses dynamic shifting."""
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        _, height, width = geometry
        visual_tokens = (height // self.token_cell) * (width // self.token_cell)
        timesteps, _ = retrieve_timesteps(
            self.pipe.scheduler, num_inference_steps, self.device,
            **self._schedule_kwargs(num_inference_steps, visual_tokens),
        )
        return timesteps.clone()

    def _shift(self, visual_tokens: int) -> float:
        """The pipelines' ``calculate_shift`` with the scheduler's configured bounds."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        return calculate_shift(
            visual_tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def _call_layout(self, module: nn.Module, args: tuple, kwargs: dict,
                     runtime: Runtime) -> tuple[TokenLayout, bool, torch.Tensor]:
        """``(layout, conditional, encoder_hidden_states)`` of a transformer call from its
        arguments: ``conditional`` is False for calls that run only unconditional or perturbed
        branches (Flux true-CFG negative call, SD3 skip-layer guidance)."""

    def register_hooks(self, runtime: Runtime) -> list[RemovableHandle]:
        def before_transformer(module, args, kwargs):
            layout, conditional, prompt = self._call_layout(module, args, kwargs, runtime)
            runtime.begin_call(layout, conditional=conditional)
            if runtime.concepts_active:
                runtime.concept_state.start(layout.analysed_batch, prompt)

        return call_hooks(self.transformer, runtime, before_transformer) + concept_block_hooks(
            list(self.transformer.transformer_blocks), runtime
        )
