"""Wan2.1 (text-to-video and image-to-video): sites, prompt-word concepts, geometry, pipelines.

Wan is a cross-attention DiT. Every block ``blocks.{l}`` has two sites:

* ``blocks.{l}.attn`` (``attn1``, kind ``"self"``): the ``F*h*w`` visual tokens attend to each
  other; ``hook_q``/``hook_k`` after the RMS q/k-norm and the 3-D rotary embedding.
* ``blocks.{l}.cross_attn`` (``attn2``, kind ``"cross"``): visual queries (``hook_q``,
  ``hook_z``: ``F*h*w`` tokens) attend to the ``T`` prompt tokens (``hook_k``, ``hook_v``;
  ``T`` = ``max_sequence_length`` slots, padding included: Wan attends to every slot, the
  padding slots hold the text projection of zero embeddings). No rotary.

Attention is captured where the stock processor calls diffusers' attention dispatch.
Image-to-video (Wan2.1 I2V, ``added_kv_proj_dim`` set): ``attn2`` also receives the CLIP image
context, prepended to the prompt. The stock processor splits it off and lets the visual queries
attend to it first, in a *separate* softmax whose output it adds to the text attention's output
before the output projection. So the cross site makes two attention calls (``attentions =
("image", "main")``): ``hook_k``/``hook_v``/``hook_z`` are the text attention's, and the image
branch has its own hook points outside the stable set, ``hook_image_k``/``hook_image_v``
(``[batch, heads, I, head_dim]``, ``I`` image-context tokens, after ``norm_added_k``) and
``hook_image_z`` (``[batch, heads, F*h*w, head_dim]``), reachable as
``graph["blocks.3.cross_attn"].hook_image_k`` or by module path
``blocks.3.attn2.processor.hook_image_k``.

No concept stream (docs/methods.md, "Prompt-word concepts"): a concept must be a word (or
run of words) of the prompt (:meth:`WanAdapter.prompt_words`); at every cross site the prompt
keys and values at its tokens, reduced over sub-tokens (``"first"`` or ``"mean"``), are the
visit's concept tensors ``k``/``v`` (``[B_c, heads, C, head_dim]``), so analyses reading
``("k", "concept")`` run unchanged.

CFG: the pipelines make two separate transformer calls per step, ``cache_context("cond")`` then
``cache_context("uncond")``; the second is not analysed (:mod:`vidinterp.branches`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from vidinterp.adapter import Adapter, ConceptReduction, ConceptTokens, prompt_word_concepts
from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout
from vidinterp.prompt_words import PromptWords, locate_prompt_words
from vidinterp.registry import register_adapter
from vidinterp.sites import SiteSpec

__all__ = ["WanAdapter"]


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
    token_order = "separate"
    default_renoise_fraction = 0.4  # reference: step 20 of 50
    vae_latent_frames_per_pass = 1  # AutoencoderKLWan encodes and decodes frame by frame (its frame cache)

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError(
                f"{type(pipe).__name__} has a second transformer (Wan2.2 two-stage denoising); vidinterp's "
                f"Wan adapter hooks one transformer only: load the pipeline without transformer_2"
            )
        #: image-to-video renoising: ``(first frame, pixel frames)`` of the last encoded video.
        self._conditioning: tuple[Any, int] | None = None

    # ---------------------------------------------------------------- sites and calls
    def site_specs(self) -> list[SiteSpec]:
        specs = []
        for index, block in enumerate(self.transformer.blocks):
            for name, path, kind in (("attn", "attn1", "self"), ("cross_attn", "attn2", "cross")):
                attention = getattr(block, path)
                image_context = kind == "cross" and attention.add_k_proj is not None
                specs.append(SiteSpec(
                    name=f"blocks.{index}.{name}", layer=index, module_path=f"blocks.{index}.{path}",
                    heads=attention.heads, head_dim=attention.inner_dim // attention.heads, kind=kind,
                    attentions=("image", "main") if image_context else ("main",),
                ))
        return specs

    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """Every site tensor indexes its own tokens from 0: visual tokens (``hook_q``/``hook_z``,
        and ``hook_k``/``hook_v`` at self sites) ``[0, F*h*w)``, prompt tokens
        (``hook_k``/``hook_v`` at cross sites) ``[0, T)``."""
        batch, _, latent_frames, latent_height, latent_width = arguments["hidden_states"].shape
        return self.latent_layout(batch, latent_frames, latent_height, latent_width,
                                  arguments["encoder_hidden_states"].shape[1], pixel_frames)

    def cfg_batched(self, guidance_scale: float) -> bool:
        """Never: the Wan pipelines run the CFG branches as separate calls."""
        return False

    # ---------------------------------------------------------------- text
    @property
    def max_text_length(self) -> int:
        """Prompt-token slots ``T`` the pipeline encodes to (its ``max_sequence_length`` default)."""
        return int(self.call_default("max_sequence_length"))

    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """No concept stream: see :func:`~vidinterp.adapter.prompt_word_concepts`."""
        return prompt_word_concepts(self.pipe.tokenizer, concepts, reduction)

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> PromptWords:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return locate_prompt_words(self.pipe.tokenizer, prompt_clean(prompt), concepts, reduction,
                                   max_length=self.max_text_length, model="Wan (no concept stream)")

    # ---------------------------------------------------------------- geometry
    @property
    def prompt_tokens(self) -> int:
        return self.max_text_length

    def geometry(self) -> Geometry:
        """Native geometry: the transformer config's ``native_geometry`` when set (tiny pipelines
        set it), else the pipeline's ``__call__`` defaults (Wan2.1: 81 frames at 480x832). The
        rotary table's length (``rope_max_seq_len``) bounds the token grid and frames."""
        config = self.transformer.config
        native = config.get("native_geometry")
        if native is None:
            native = [self.call_default(name) for name in ("num_frames", "height", "width")]
        patch_t, patch_h, patch_w = config.patch_size
        if patch_h != patch_w:
            raise NotImplementedError(f"Wan with a non-square patch {config.patch_size} is not supported")
        return Geometry(model="Wan", native=tuple(int(size) for size in native), temporal_compression=self.temporal_compression,
                        spatial_compression=self.spatial_compression, patch=int(patch_h), temporal_patch=int(patch_t),
                        max_grid=int(config.rope_max_seq_len), max_token_frames=int(config.rope_max_seq_len))

    # ---------------------------------------------------------------- running
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
        if self.image_to_video:
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
        condition, image_embeds = self._image_conditioning(latents) if self.image_to_video else (None, None)

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
