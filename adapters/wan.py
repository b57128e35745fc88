"""Wan2.1 (text-to-video and image-to-video): sites, prompt-word concepts, geometry, pipelines.

Wan is a cross-attention DiT. Every block ``blocks.{l}`` has two sites:

* ``blocks.{l}.attn`` (``attn1``, kind ``"self"``): the ``F*h*w`` visual tokens attend to each
  other; ``hook_q``/``hook_k`` after the RMS q/k-norm and the 3-D rotary embedding.
* ``blocks.{l}.cross_attn`` (``attn2``, kind ``"cross"``): visual queries (``hook_q``,
  ``hook_z``: ``F*h*w`` tokens) attend to the ``T`` prompt tokens (``hook_k``, ``hook_v``;
  ``T`` = ``max_sequence_length`` slots, padding included: Wan attends to every slot, the
  padding slots hold the text projection of zero embeddings). No rotary.

Image-to-video (Wan2.1 I2V, ``added_kv_proj_dim`` set): ``attn2`` also receives the CLIP image
context, prepended to the prompt. The stock processor splits it off (everything before the last
512 tokens), and the visual queries attend to it in a *separate* softmax whose output is added
to the text-attention output before the output projection. So at the cross site ``hook_k`` and
``hook_v`` hold the prompt tokens only, and ``hook_z`` is the per-head sum ``z_text + z_image``
that enters ``to_out`` (editing it edits the whole head). The image branch has its own hook
points on the processor, outside the stable hook-name set: ``hook_image_k``/``hook_image_v``
(``[batch, heads, I, head_dim]``, ``I`` image-context tokens, after ``norm_added_k``) and
``hook_image_z`` (``[batch, heads, F*h*w, head_dim]``, the image branch's output before the
sum), reachable as ``graph["blocks.3.cross_attn"].hook_image_k`` or by module path
``blocks.3.attn2.processor.hook_image_k``.

No concept stream (docs/methods.md, "Prompt-word concepts (Wan)"): a concept must be a word
(or run of words) of the prompt. :meth:`WanAdapter.concept_state` maps each concept to its
token positions in the tokenized prompt; at every cross site the prompt keys and values at
those positions, reduced over sub-tokens (``"first"`` or ``"mean"``), are the visit's concept
tensors ``k``/``v`` (``[cond_batch, heads, C, head_dim]``), so analyses reading
``("k", "concept")`` run unchanged.

CFG: the pipelines make two separate transformer calls per step, conditional first, then
unconditional, with the same latents and timestep. A call that repeats the previous call's step
index and timestep is the unconditional one: it is neither analysed nor counted as a step, and
the processors skip all extra work in it (hook points still fire, so edits reach both branches).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vidinterp.adapter import (
    CONCEPT_REDUCTIONS,
    Adapter,
    ConceptReduction,
    ConceptTokens,
    call_argument,
    call_hooks,
    word_pieces,
)
from vidinterp.hooks import HookPoint
from vidinterp.layout import TokenLayout, causal_frame_spans
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.runtime import Runtime
from vidinterp.sites import SiteProcessor, SiteSpec

__all__ = ["WanAdapter", "WanSiteProcessor", "WAN_TEXT_CONTEXT"]

#: Text-context length the stock ``WanAttnProcessor`` assumes when it splits the image context
#: off ``attn2``'s input (hard-coded there; image-to-video prompts must be encoded to it).
WAN_TEXT_CONTEXT = 512

def _apply_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """The stock processor's rotary embedding on ``[batch, tokens, heads, head_dim]``
    (interleaved pairs), copied operation for operation."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanSiteProcessor(SiteProcessor):
    """``WanAttnProcessor`` with hook points, for ``attn1`` (self) and ``attn2`` (cross).

    Reproduces the stock math operation for operation (same projections, norms, rotary and
    ``dispatch_attention_fn`` calls with the original processor's attention backend), so the
    output is bit-identical; ``image_context`` adds the image-branch hook points of an
    image-to-video ``attn2``.
    """

    def __init__(self, spec: SiteSpec, original: object, runtime: Runtime, image_context: bool = False) -> None:
        super().__init__(spec, original, runtime)
        if image_context:
            self.hook_image_k = HookPoint()
            self.hook_image_v = HookPoint()
            self.hook_image_z = HookPoint()

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, parallel_config: Any) -> torch.Tensor:
        """``[B, H, S, d]`` q/k/v -> ``[B, H, S, d]`` attention output, through the same
        ``dispatch_attention_fn`` call as the stock processor (which takes ``[B, S, H, d]``)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        output = dispatch_attention_fn(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=getattr(self.original, "_attention_backend", None),
            parallel_config=parallel_config,
        )
        return output.type_as(query).transpose(1, 2)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.transformers.transformer_wan import (
            _get_added_kv_projections,
            _get_qkv_projections,
        )

        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            image_context_length = encoder_hidden_states.shape[1] - WAN_TEXT_CONTEXT
            encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)
        # [B, S, H, d] -> [B, H, S, d] views for the hook points.
        query = self.hook_q(query.transpose(1, 2))
        key = self.hook_k(key.transpose(1, 2))
        value = self.hook_v(value.transpose(1, 2))

        image_output = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img)
            key_img = self.hook_image_k(key_img.unflatten(2, (attn.heads, -1)).transpose(1, 2))
            value_img = self.hook_image_v(value_img.unflatten(2, (attn.heads, -1)).transpose(1, 2))
            image_output = self.hook_image_z(self._attend(query, key_img, value_img, None, None))

        parallel_config = getattr(self.original, "_parallel_config", None) if encoder_hidden_states is None else None
        output = self._attend(query, key, value, attention_mask, parallel_config)
        if image_output is not None:
            output = output + image_output
        output = self.hook_z(output)

        if self.runtime.active:
            self._report(query, key, value, output)

        hidden_states = output.transpose(1, 2).flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states

    def _report(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output: torch.Tensor) -> None:
        """Hand the conditional call's tensors to the runtime; at cross sites with concepts,
        the concepts' prompt keys/values ``[cond_batch, heads, C, head_dim]`` too."""
        visual = {"visual": slice(0, query.shape[2])}
        if self.spec.kind == "self":
            self.report({"q": query, "k": key, "v": value, "z": output}, dict.fromkeys("qkvz", visual))
            return
        prompt = {"prompt": slice(0, key.shape[2])}
        concept_tensors = {}
        if self.runtime.concepts_active:
            state: PromptWords = self.runtime.concept_state
            rows = self.runtime.layout.analysed_rows
            concept_tensors = {"k": state.gather(key[rows]), "v": state.gather(value[rows])}
        self.report(
            {"q": query, "k": key, "v": value, "z": output},
            {"q": visual, "z": visual, "k": prompt, "v": prompt},
            concept_tensors,
        )


def _to_image(frame: torch.Tensor):
    """``[3, H, W]`` in ``[-1, 1]`` -> ``PIL.Image`` (inverse of ``vidinterp.video.to_model_pixels``)."""
    from PIL import Image

    pixels = ((frame.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


@register_adapter
class WanAdapter(Adapter):
    """Wan2.1 ``WanPipeline`` (text-to-video) and ``WanImageToVideoPipeline`` (image-to-video).

    Two-transformer Wan2.2 pipelines (``transformer_2``) are not supported: their low-noise
    steps would run unhooked.
    """

    family = "wan"
    transformer_class_names = ("WanTransformer3DModel",)
    default_renoise_fraction = 0.4  # reference: step 20 of 50
    has_concept_stream = False

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError(
                f"{type(pipe).__name__} has a second transformer (Wan2.2 two-stage denoising); vidinterp's "
                f"Wan adapter hooks one transformer only: load the pipeline without transformer_2"
            )
        #: image-to-video renoising: ``(first frame, pixel frames)`` of the last encoded video.
        self._conditioning: tuple[Any, int] | None = None

    # ---------------------------------------------------------------- sites
    def site_specs(self) -> list[SiteSpec]:
        specs = []
        for index, block in enumerate(self.transformer.blocks):
            for name, path, kind in (("attn", "attn1", "self"), ("cross_attn", "attn2", "cross")):
                attention = getattr(block, path)
                specs.append(SiteSpec(
                    name=f"blocks.{index}.{name}",
                    layer=index,
                    module_path=f"blocks.{index}.{path}",
                    heads=attention.heads,
                    head_dim=attention.inner_dim // attention.heads,
                    kind=kind,
                ))
        return specs

    def make_processor(self, spec: SiteSpec, original: object, runtime: Runtime) -> SiteProcessor:
        image_context = self.attention_module(spec).add_k_proj is not None
        return WanSiteProcessor(spec, original, runtime, image_context=image_context)

    def register_hooks(self, runtime: Runtime) -> list[RemovableHandle]:
        """Announce each transformer call; a call repeating the previous call's step index and
        timestep (the pipeline's unconditional CFG call) is announced as unconditional. Under
        :func:`vidinterp.hooked`, where no driver announces steps, the timestep alone tells."""
        previous: dict[str, Any] = {}

        def before_transformer(module, args, kwargs):
            latents = call_argument(module, args, kwargs, "hidden_states")
            prompt = call_argument(module, args, kwargs, "encoder_hidden_states")
            timestep = call_argument(module, args, kwargs, "timestep")
            batch, _, latent_frames, latent_height, latent_width = latents.shape
            layout = self._layout(batch, latent_frames, latent_height, latent_width, prompt.shape[1])
            repeated = previous.get("step") == runtime.step and torch.equal(previous["timestep"], timestep)
            previous.update(step=runtime.step, timestep=timestep.detach().clone())
            runtime.begin_call(layout, conditional=not repeated)

        return call_hooks(self.transformer, runtime, before_transformer)

    def cfg_batched(self, guidance_scale: float) -> bool:
        """Never: the Wan pipelines run the CFG branches as separate calls."""
        return False

    # ---------------------------------------------------------------- text
    @property
    def max_text_length(self) -> int:
        """Prompt-token slots ``T`` the pipeline encodes to (its ``max_sequence_length`` default)."""
        return int(inspect.signature(type(self.pipe).__call__).parameters["max_sequence_length"].default)

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Wan has no concept stream: concepts are not encoded on their own. Returns the names,
        their stand-alone tokenizer pieces and the reduction, with zero-width embeddings
        ``[C, 0]``; :meth:`concept_state` maps the concepts onto the prompt's tokens."""
        if reduction not in CONCEPT_REDUCTIONS:
            raise ValueError(f"concept reduction must be one of {CONCEPT_REDUCTIONS}, got {reduction!r}")
        pieces = [word_pieces(self.pipe.tokenizer, concept)[1] for concept in concepts]
        return ConceptTokens(list(concepts), torch.zeros(len(concepts), 0), pieces, reduction)

    def concept_state(self, concepts: ConceptTokens, prompt: str | None) -> PromptWords:
        """Map each concept to its token positions in ``prompt`` as the pipeline tokenizes it
        (cleaned, special tokens added, truncated to ``max_sequence_length``); see
        :func:`~vidinterp.prompt_words.locate_prompt_words`.

        Raises:
            ValueError: without a prompt, or naming the prompt's words when a concept is not
                among them.
        """
        names = list(concepts.names)
        if not prompt:
            raise ValueError(
                f"Wan has no concept stream: concepts {names} must be words of the prompt, so a prompt "
                f"is needed (trace(..., prompt=...) or hooked(..., prompt=...))"
            )
        return self.prompt_words(prompt, names, concepts.reduction)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return locate_prompt_words(self.pipe.tokenizer, prompt_clean(prompt), concepts, reduction,
                                   max_length=self.max_text_length, model="Wan (no concept stream)")

    # ---------------------------------------------------------------- geometry
    def default_geometry(self) -> tuple[int, int, int]:
        """The transformer config's ``native_geometry`` ``(frames, height, width)`` when set
        (tiny pipelines set it), else the pipeline's ``__call__`` defaults (Wan2.1: 81 frames
        at 480x832)."""
        native = self.transformer.config.get("native_geometry")
        if native is not None:
            return tuple(int(size) for size in native)
        parameters = inspect.signature(type(self.pipe).__call__).parameters
        return tuple(int(parameters[name].default) for name in ("num_frames", "height", "width"))

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        config = self.transformer.config
        k = self.temporal_compression
        patch_t, patch_h, patch_w = config.patch_size
        limit = config.rope_max_seq_len
        problems = []
        if num_frames < 1 or (num_frames - 1) % k:
            problems.append(f"num_frames must be {k}*n + 1 (e.g. {k * ((max(num_frames, 1) - 1) // k) + 1}), got {num_frames}")
        elif ((num_frames - 1) // k + 1) % patch_t:
            problems.append(f"the {(num_frames - 1) // k + 1} latent frames must be a multiple of the temporal patch {patch_t}")
        elif ((num_frames - 1) // k + 1) // patch_t > limit:
            problems.append(f"num_frames gives more than rope_max_seq_len={limit} token frames")
        for name, size, patch in (("height", height, patch_h), ("width", width, patch_w)):
            cell = self.spatial_compression * patch
            if size < cell or size % cell:
                problems.append(f"{name} must be a positive multiple of {cell} pixels, got {size}")
            elif size // cell > limit:
                problems.append(f"{name} must be at most {cell * limit} pixels (rope_max_seq_len={limit}), got {size}")
        if problems:
            default = self.default_geometry()
            raise ValueError(
                "invalid video geometry for Wan: " + "; ".join(problems)
                + f" (this model's native geometry: {default[0]} frames at {default[1]}x{default[2]})"
            )

    def _layout(self, batch: int, latent_frames: int, latent_height: int, latent_width: int,
                text_length: int) -> TokenLayout:
        """One call's layout. Every site tensor indexes its own tokens from 0: visual tokens
        (``hook_q``/``hook_z``, and ``hook_k``/``hook_v`` at self sites) ``[0, F*h*w)``, prompt
        tokens (``hook_k``/``hook_v`` at cross sites) ``[0, T)``. The whole batch is
        conditional (CFG branches are separate calls)."""
        patch_t, patch_h, patch_w = self.transformer.config.patch_size
        frames, height, width = latent_frames // patch_t, latent_height // patch_h, latent_width // patch_w
        return TokenLayout(
            frames=frames,
            height=height,
            width=width,
            visual=slice(0, frames * height * width),
            prompt=slice(0, text_length),
            concepts=0,
            batch=batch,
            analysed_rows=slice(0, batch),
            frame_spans=causal_frame_spans(frames, self.temporal_compression, self.transformer.config.patch_size[0]),
            pixels_per_token=(self.spatial_compression * patch_h, self.spatial_compression * patch_w),
        )

    def layout_for(self, num_frames: int, height: int, width: int, batch: int = 1) -> TokenLayout:
        self.check_geometry(num_frames, height, width)
        return self._layout(
            batch, (num_frames - 1) // self.temporal_compression + 1, height // self.spatial_compression,
            width // self.spatial_compression, self.max_text_length,
        )

    # ---------------------------------------------------------------- running
    @property
    def _image_to_video(self) -> bool:
        return "ImageToVideo" in type(self.pipe).__name__

    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        self.check_geometry(num_frames, height, width)
        return {"num_frames": num_frames, "height": height, "width": width,
                "max_sequence_length": self.max_text_length}

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel ``latents_mean`` and ``latents_std``, ``[1, z, 1, 1, 1]``."""
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``[frames, 3, H, W]`` in ``[-1, 1]`` -> normalised latents ``[1, z, F, h, w]``:
        ``(sample - latents_mean) / latents_std``, the inverse of the pipeline's decoding.
        Image-to-video: also remembers the first frame, the image the renoising denoiser
        conditions on."""
        vae = self.pipe.vae
        pixels = video.to(device=vae.device, dtype=vae.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample(generator)
        mean, std = self._latent_statistics(latents)
        if self._image_to_video:
            self._conditioning = (_to_image(video[0]), video.shape[0])
        return ((latents - mean) / std).to(self.dtype)

    def denoiser(self, prompt: str, latents: torch.Tensor, guidance_scale: float,
                 negative_prompt: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """As the pipeline's loop: conditional call, then (``guidance_scale > 1``) the
        unconditional call with the same latents and timestep; image-to-video conditions on
        the first frame of the video last passed to :meth:`encode_video` (mask + VAE latents
        of that frame, CLIP image embeddings)."""
        pipe, transformer, dtype = self.pipe, self.transformer, self.dtype
        if pipe.config.get("expand_timesteps"):
            raise NotImplementedError("renoising Wan2.2 TI2V (expand_timesteps=True) is not supported")
        cfg = guidance_scale > 1.0
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
            max_sequence_length=self.max_text_length, device=self.device,
        )
        prompt_embeds = prompt_embeds.to(dtype)
        negative_embeds = negative_embeds.to(dtype) if cfg else None
        condition, image_embeds = self._image_conditioning(latents) if self._image_to_video else (None, None)

        def call(current: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            model_input = current.to(dtype)
            if condition is not None:
                model_input = torch.cat([current, condition], dim=1).to(dtype)
            timesteps = timestep.expand(current.shape[0])
            with transformer.cache_context("cond"):
                output = transformer(hidden_states=model_input, timestep=timesteps, encoder_hidden_states=prompt_embeds,
                                     encoder_hidden_states_image=image_embeds, return_dict=False)[0]
            if cfg:
                with transformer.cache_context("uncond"):
                    unconditional = transformer(hidden_states=model_input, timestep=timesteps,
                                                encoder_hidden_states=negative_embeds,
                                                encoder_hidden_states_image=image_embeds, return_dict=False)[0]
                output = unconditional + guidance_scale * (output - unconditional)
            return output

        return call

    def _image_conditioning(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(condition [1, k + z, F, h, w], image embeddings or None)`` for the remembered
        first frame, built by the pipeline's own ``prepare_latents`` / ``encode_image``."""
        pipe = self.pipe
        if self._conditioning is None:
            raise RuntimeError("image-to-video renoising conditions on the video's first frame: call encode_video first")
        image, num_frames = self._conditioning
        height, width = image.height, image.width
        pixels = pipe.video_processor.preprocess(image, height=height, width=width).to(self.device, dtype=torch.float32)
        _, condition = pipe.prepare_latents(
            pixels, latents.shape[0], pipe.vae.config.z_dim, height, width, num_frames, torch.float32,
            self.device, None, latents,
        )
        image_embeds = None
        if self.transformer.config.image_dim is not None:
            image_embeds = pipe.encode_image(image, self.device).repeat(latents.shape[0], 1, 1).to(self.dtype)
        return condition, image_embeds
