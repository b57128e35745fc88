"""The adapter protocol: what is model-specific, declared once per family.

One adapter file per model family (``adapters/<family>.py``, installed as
``vidinterp.adapters.<family>``) subclasses :class:`Adapter`, decorates it with
:func:`~vidinterp.registry.register_adapter`, and must pass the public conformance checks
(:func:`vidinterp.testing.check_adapter`) unchanged. An adapter declares its sites
(:meth:`Adapter.site_specs`), the layout of a transformer call (:meth:`Adapter.call_layout`),
its geometry rules (:meth:`Adapter.geometry`), its text path (:meth:`Adapter.encode_concepts`,
:meth:`Adapter.concept_stream`) and how the pipeline runs a denoising step
(:meth:`Adapter.denoiser`); the core installs the sites, follows the CFG branches, runs the
concept stream and drives the trace.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch
from torch import nn

from vidinterp.geometry import Geometry
from vidinterp.layout import TokenLayout, TokenOrder, token_layout
from vidinterp.processors import DispatchSiteProcessor, SiteObserver, SiteProcessor
from vidinterp.sites import SiteSpec

if TYPE_CHECKING:
    from vidinterp.concept_stream import ConceptStreamSpec
    from vidinterp.prompt_words import PromptWords

__all__ = [
    "Adapter",
    "ConceptTokens",
    "ConceptReduction",
    "word_pieces",
    "reduce_concept_rows",
    "call_argument",
    "joint_site_specs",
]

ConceptReduction = Literal["first", "mean"]
CONCEPT_REDUCTIONS = ("first", "mean")


@dataclass
class ConceptTokens:
    """Concepts encoded by the model's text encoder, one vector per concept.

    Attributes:
        names: concept names, in order.
        embeddings: ``[C, text_dim]`` text-encoder outputs (before the transformer's own text
            projection), one row per concept after the sub-token reduction.
        pieces: the tokenizer's pieces of each concept (without special tokens).
        reduction: ``"first"`` (first sub-token, reference parity) or ``"mean"``.
        extras: model-specific companions (e.g. pooled embeddings).
        padding: zero-embedding slots after the concepts (:meth:`padded`); ``embeddings`` has
            ``len(names) + padding`` rows.
    """

    names: list[str]
    embeddings: torch.Tensor
    pieces: list[list[str]]
    reduction: ConceptReduction
    extras: dict[str, Any] | None = None
    padding: int = 0

    def padded(self, slots: int) -> "ConceptTokens":
        """A copy whose concept stream runs ``slots`` rows: the concepts, then zero embeddings
        (the official IMAP code pads concepts to the text length, so real concepts also attend
        to the padding rows)."""
        extra = slots - len(self.names)
        if extra < 0:
            raise ValueError(f"concept_slots={slots} is fewer than the {len(self.names)} concepts {self.names}")
        zeros = self.embeddings.new_zeros(extra, *self.embeddings.shape[1:])
        return dataclasses.replace(self, embeddings=torch.cat([self.embeddings[: len(self.names)], zeros]), padding=extra)


def word_pieces(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """Token ids and pieces of ``text`` without special tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids), tokenizer.convert_ids_to_tokens(list(ids))


def prompt_word_concepts(tokenizer, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
    """Concepts of a family without a concept stream (they are words of the prompt): the names,
    their stand-alone tokenizer pieces and the reduction, with zero-width embeddings ``[C, 0]``.
    The adapter's ``prompt_words`` later finds them among the prompt's tokens."""
    if reduction not in CONCEPT_REDUCTIONS:
        raise ValueError(f"concept reduction must be one of {CONCEPT_REDUCTIONS}, got {reduction!r}")
    pieces = [word_pieces(tokenizer, concept)[1] for concept in concepts]
    return ConceptTokens(list(concepts), torch.zeros(len(concepts), 0), pieces, reduction)


def reduce_concept_rows(
    hidden: torch.Tensor, positions: list[list[int]], names: list[str], pieces: list[list[str]],
    reduction: ConceptReduction,
) -> torch.Tensor:
    """Reduce each concept's sub-token rows to one vector.

    Args:
        hidden: ``[C, tokens, dim]`` encoder outputs, row ``c`` encoding concept ``c``.
        positions: token positions of each concept's sub-tokens in its row.
        reduction: ``"first"`` keeps the first sub-token, ``"mean"`` averages all of them.

    Returns:
        ``[C, dim]``. Warns once per concept that splits into several tokens, naming the
        reduction applied.
    """
    if reduction not in CONCEPT_REDUCTIONS:
        raise ValueError(f"concept reduction must be one of {CONCEPT_REDUCTIONS}, got {reduction!r}")
    rows = []
    for index, (name, places, parts) in enumerate(zip(names, positions, pieces)):
        if not places:
            raise ValueError(f"concept {name!r} encodes to no tokens; give a non-empty word")
        if len(places) > 1:
            how = "the first sub-token" if reduction == "first" else "the mean of its sub-tokens"
            warnings.warn(
                f"concept {name!r} splits into {len(places)} tokens {parts}; using {how} "
                f"(concept_reduction={reduction!r})",
                stacklevel=3,
            )
        chosen = places[:1] if reduction == "first" else places
        rows.append(hidden[index, chosen].float().mean(dim=0).to(hidden.dtype))
    return torch.stack(rows)


def call_argument(module: nn.Module, args: tuple, kwargs: dict, name: str, default: Any = None) -> Any:
    """The value of parameter ``name`` of ``module``'s ``forward`` in a forward hook's
    ``args``/``kwargs`` (``default`` when the call leaves it out). Reads the class's signature:
    wrappers such as nnsight may change the bound method's."""
    if name in kwargs:
        return kwargs[name]
    parameters = list(inspect.signature(type(module).forward).parameters)[1:]
    index = parameters.index(name)
    return args[index] if index < len(args) else default


def _offloaded(module: nn.Module) -> bool:
    """Whether offloading hooks move ``module``'s weights to its execution device for each call:
    accelerate's (``_hf_hook``: ``device_map`` dispatch, CPU offload) or diffusers' group
    offloading."""
    if any(hasattr(submodule, "_hf_hook") for submodule in module.modules()):
        return True
    try:
        from diffusers.hooks.group_offloading import _is_group_offload_enabled
    except ImportError:  # a diffusers without group offloading
        return False
    return _is_group_offload_enabled(module)


def joint_site_specs(transformer: nn.Module, groups: list[tuple[str, str, bool]]) -> list[SiteSpec]:
    """Sites of joint-attention blocks, named ``blocks.{l}.attn`` with ``l`` counting across
    groups in execution order.

    Args:
        groups: ``(block list attribute, attention attribute, carries the concept stream)`` per
            group of blocks, e.g. ``[("transformer_blocks", "attn", True),
            ("single_transformer_blocks", "attn", False)]``.
    """
    specs = []
    for blocks_name, attention_name, concept_stream in groups:
        for index, block in enumerate(getattr(transformer, blocks_name)):
            attention = getattr(block, attention_name)
            specs.append(SiteSpec(
                name=f"blocks.{len(specs)}.attn",
                layer=len(specs),
                module_path=f"{blocks_name}.{index}.{attention_name}",
                heads=attention.heads,
                head_dim=attention.inner_dim // attention.heads,
                kind="joint",
                concept_stream=concept_stream,
            ))
    return specs


class Adapter(ABC):
    """Model-family knowledge for one diffusers pipeline.

    Subclasses set the class attributes and implement the abstract methods. Geometry (frames,
    grid, text length, heads, token order) comes from the config and the call's inputs, never
    from constants.
    """

    #: registry key, e.g. ``"cogvideox"``.
    family: ClassVar[str]
    #: class names of the transformers this adapter handles.
    transformer_class_names: ClassVar[tuple[str, ...]]
    #: where visual tokens sit in a site's sequences (see :data:`~vidinterp.layout.TokenOrder`).
    token_order: ClassVar[TokenOrder]
    #: renoising default: start at this fraction of the schedule (reference per family).
    default_renoise_fraction: ClassVar[float] = 0.6
    #: guidance scale for renoising when none is given: 1.0 runs no unconditional branch (the
    #: maps read the conditional one); ``None`` keeps the pipeline's default, for models whose
    #: guidance is an embedded scalar rather than a second branch (HunyuanVideo, Flux).
    default_renoise_guidance: ClassVar[float | None] = 1.0
    #: memory guard (:mod:`vidinterp.memory`): whether it may enable the VAE's tiling for a clip
    #: that would not fit otherwise (``False`` for a family whose VAE must never be tiled).
    vae_tiling: ClassVar[bool] = True
    #: memory guard: latent frames the family's VAE encodes/decodes per pass (e.g. 1 for a VAE
    #: that caches frame by frame); ``None``: what the VAE declares, else all frames at once.
    vae_latent_frames_per_pass: ClassVar[int | None] = None

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.transformer: nn.Module = pipe.transformer

    @classmethod
    def supports(cls, transformer: nn.Module) -> bool:
        return type(transformer).__name__ in cls.transformer_class_names

    # ---------------------------------------------------------------- sites and calls
    @abstractmethod
    def site_specs(self) -> list[SiteSpec]:
        """Every site of the transformer, in execution order."""

    def attention_module(self, spec: SiteSpec) -> nn.Module:
        return self.transformer.get_submodule(spec.module_path)

    def make_processor(self, spec: SiteSpec, original: object, observer: SiteObserver) -> SiteProcessor:
        """The site's processor while traced. Default: the original processor, captured where it
        calls diffusers' attention dispatch (:class:`~vidinterp.processors.DispatchSiteProcessor`);
        families whose stock processor calls SDPA directly return a rewritten one."""
        return DispatchSiteProcessor(spec, original, observer)

    @abstractmethod
    def call_layout(self, arguments: dict[str, Any], pixel_frames: int | None) -> TokenLayout:
        """The token layout of a transformer call from its arguments by name (every row
        analysed; the core picks the CFG rows). ``pixel_frames``: the video's pixel frames when
        the driver knows them (for the frame spans)."""

    def is_perturbed_call(self, arguments: dict[str, Any]) -> bool:
        """Whether a call runs a perturbed guidance branch that is never analysed (e.g. SD3's
        skip-layer guidance). Default: no call is."""
        return False

    # ---------------------------------------------------------------- text
    @abstractmethod
    def encode_concepts(self, concepts: list[str], reduction: ConceptReduction) -> ConceptTokens:
        """Encode concept words with the pipeline's own text encoder."""

    def concept_stream(self, concepts: ConceptTokens) -> "ConceptStreamSpec | None":
        """The model's concept stream for these concepts
        (:class:`~vidinterp.concept_stream.ConceptStreamSpec`), or ``None`` for a family whose
        concepts are words of the prompt (:meth:`prompt_words`). Default: ``None``."""
        return None

    @property
    def has_concept_stream(self) -> bool:
        """Whether some site carries the concept stream."""
        return any(spec.concept_stream for spec in self.site_specs())

    def prompt_words(self, prompt: str, concepts: list[str], reduction: ConceptReduction) -> "PromptWords":
        """Each concept located among the prompt tokens of a call (positions in the
        transformer's prompt sequence; :func:`~vidinterp.prompt_words.locate_prompt_words`), for
        QK matching against prompt keys and for families whose concepts are prompt words."""
        raise NotImplementedError(f"locating concepts among the prompt tokens is not implemented for {self.family}")

    # ---------------------------------------------------------------- geometry
    @abstractmethod
    def geometry(self) -> Geometry:
        """The model's pixel-geometry rules, read from its config."""

    @property
    @abstractmethod
    def prompt_tokens(self) -> int:
        """Prompt-token slots ``T`` of a call as the pipeline encodes prompts (padding included)."""

    def default_geometry(self) -> tuple[int, int, int]:
        """``(num_frames, height, width)`` in pixels that the model is made for."""
        return self.geometry().native

    def check_geometry(self, num_frames: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the expected values if the pixel geometry is invalid."""
        self.geometry().check(num_frames, height, width)

    def layout_for(self, num_frames: int, height: int, width: int, batch: int = 1) -> TokenLayout:
        """Token layout of a call on a video of the given pixel geometry (every row analysed)."""
        geometry = self.geometry()
        cell = geometry.token_cell
        return token_layout(*geometry.tokens(num_frames, height, width), self.prompt_tokens, self.token_order,
                            batch=batch, frame_spans=geometry.frame_spans(num_frames), pixels_per_token=(cell, cell))

    def latent_layout(self, batch: int, latent_frames: int, latent_height: int, latent_width: int, prompt_tokens: int,
                      pixel_frames: int | None, prompt_mask: torch.Tensor | None = None) -> TokenLayout:
        """The layout of a call on ``[latent_frames, latent_height, latent_width]`` latents (before
        patching) and ``prompt_tokens`` prompt slots, as the model's :meth:`geometry` and
        ``token_order`` place them; every row analysed."""
        geometry = self.geometry()
        frames = latent_frames // geometry.temporal_patch
        cell = geometry.token_cell
        return token_layout(frames, latent_height // geometry.patch, latent_width // geometry.patch, prompt_tokens,
                            self.token_order, batch=batch, frame_spans=self.frame_spans(frames, pixel_frames),
                            pixels_per_token=(cell, cell), prompt_mask=prompt_mask)

    def frame_spans(self, token_frames: int, pixel_frames: int | None) -> tuple[tuple[int, int], ...]:
        """Pixel frames of each of a call's ``token_frames``: from the video's ``pixel_frames``
        when known, else as a causal VAE without leading padding maps them."""
        geometry = self.geometry()
        if pixel_frames is not None:
            return geometry.frame_spans(pixel_frames)
        latent = token_frames * geometry.temporal_patch
        return geometry.frame_spans(geometry.temporal_compression * (latent - 1) + 1)

    # ---------------------------------------------------------------- running
    @abstractmethod
    def generation_kwargs(self, num_frames: int, height: int, width: int) -> dict[str, Any]:
        """Extra keyword arguments for ``pipe(...)`` generating that geometry."""

    @abstractmethod
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """VAE-encode ``video`` (``[frames, 3, height, width]`` in ``[-1, 1]``) to the latents
        the transformer denoises, with the pipeline's latent scaling, batch of one."""

    @abstractmethod
    def denoiser(
        self, prompt: str, latents: torch.Tensor, guidance_scale: float, negative_prompt: str | None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A function ``(latents, timestep) -> model output`` calling the transformer as the
        pipeline does (prompt encoded once; CFG combined when ``guidance_scale > 1``), each call
        inside ``transformer.cache_context(...)`` naming its branch as the pipeline does."""

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The scheduler's timesteps for a schedule of ``num_inference_steps`` steps."""
        self.pipe.scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.pipe.scheduler.timesteps.clone()

    def timesteps_for(self, num_inference_steps: int, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The timesteps for a video of pixel ``geometry`` ``(frames, height, width)``, as the
        pipeline sets them for it. Resolution-dependent schedules (Flux's dynamic shift)
        override this; the default is :meth:`timesteps`."""
        return self.timesteps(num_inference_steps)

    def unconditional_branch(self, scale: float) -> dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` that run the pipeline's unconditional
        (negative-prompt) classifier-free-guidance branch with weight ``scale`` (``1``: no such
        branch). Default ``{"guidance_scale": scale}``; guidance-distilled families, whose
        ``guidance_scale`` is embedded in the conditioning, name their true-CFG argument."""
        return {"guidance_scale": scale}

    def latents_from_pipeline(self, latents: torch.Tensor, geometry: tuple[int, int, int]) -> torch.Tensor:
        """The pipeline's latents, as its scheduler steps them for a video of pixel ``geometry``,
        in the layout :meth:`encode_video` returns and :meth:`denoiser` takes (default: the
        same layout)."""
        return latents

    def cfg_batched(self, guidance_scale: float) -> bool:
        """Whether the pipeline stacks the CFG branches in one call (unconditional rows first) at
        this guidance scale: the fallback of :mod:`vidinterp.branches` for calls the pipeline
        does not announce."""
        return guidance_scale > 1.0

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Noise clean ``latents`` to ``timestep`` with the pipeline's scheduler."""
        scheduler = self.pipe.scheduler
        if hasattr(scheduler, "add_noise"):
            return scheduler.add_noise(latents, noise, timestep.reshape(1))
        return scheduler.scale_noise(latents, timestep.reshape(1), noise)

    def scheduler_step(self, model_output: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.scheduler.step(model_output, timestep, latents, return_dict=False)[0]

    # ---------------------------------------------------------------- helpers
    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame (the video pipeline's ``vae_scale_factor_temporal``)."""
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along y and x (``vae_scale_factor_spatial``)."""
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def device(self) -> torch.device:
        """The device the transformer computes on: its weights' device, or, when offloading
        hooks hold the weights elsewhere (accelerate's ``device_map`` with disk/CPU offload or
        CPU offload, weights on ``meta`` or the CPU; diffusers' group offloading), the
        pipeline's execution device, where those hooks run it."""
        device = next(self.transformer.parameters()).device
        if device.type == "meta" or _offloaded(self.transformer):
            execution = getattr(self.pipe, "_execution_device", None)
            if isinstance(execution, (torch.device, str)):
                return torch.device(execution)
        return device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype: diffusers' ``ModelMixin.dtype``, which skips the
        modules a half-precision load keeps in float32 (``_keep_in_fp32_modules``, e.g. Wan's
        ``scale_shift_table``, its first parameter) and reads layerwise casting's compute dtype;
        else the first parameter's dtype."""
        dtype = getattr(self.transformer, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.transformer.parameters()).dtype

    @property
    def model_name(self) -> str:
        return str(getattr(self.transformer.config, "_name_or_path", "") or self.family)

    def call_default(self, name: str) -> Any:
        """The default of the pipeline's ``__call__`` argument ``name`` (``KeyError`` when it
        takes none), e.g. ``max_sequence_length``."""
        return inspect.signature(type(self.pipe).__call__).parameters[name].default

    @property
    def image_to_video(self) -> bool:
        """Whether the pipeline is an image-to-video one (``...ImageToVideoPipeline``): its
        renoising conditions on the video's first frame."""
        return "ImageToVideo" in type(self.pipe).__name__
