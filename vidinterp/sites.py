"""Sites: every attention block of a model under one stable name, ``blocks.{l}.attn``.

While traced, each attention processor is a :class:`~vidinterp.processors.SiteProcessor`, an
``nn.Module`` whose children are :class:`~vidinterp.hooks.HookPoint` s. The hook points sit in
the model's module tree at ``<attention module>.processor.hook_q`` and so on; the
:class:`SiteGraph` maps the stable names to those modules. Hook points of a site:

============================  ================================================================
``hook_q`` / ``hook_k`` /     joint-sequence queries / keys / values after q/k-norm and rotary,
``hook_v``                    ``[batch, heads, tokens, head_dim]``
``hook_z``                    per-head attention output before the output projection, same
                              layout (queries' tokens)
``hook_concept_q|k|v|z``      the concept stream's twins, ``[analysed_batch, heads, C,
                              head_dim]`` (only on sites that carry the concept stream)
``hook_<role>_k|v|z``         keys, values and output of a site's extra attention call (e.g.
                              Wan image-to-video's ``image`` context), outside the stable set
============================  ================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator

import torch

from vidinterp.hooks import HookPoint
from vidinterp.layout import TokenLayout

if TYPE_CHECKING:
    from vidinterp.processors import SiteProcessor

__all__ = [
    "HOOK_NAMES",
    "CONCEPT_HOOK_NAMES",
    "SiteSpec",
    "SiteVisit",
    "SiteGraph",
]

HOOK_NAMES = ("hook_q", "hook_k", "hook_v", "hook_z")
CONCEPT_HOOK_NAMES = ("hook_concept_q", "hook_concept_k", "hook_concept_v", "hook_concept_z")
TENSOR_NAMES = ("q", "k", "v", "z")
#: Token parts of a site tensor: ``"all"`` is the site's whole sequence for that tensor (the
#: joint visual + prompt sequence at joint sites, in the model's order).
TOKEN_PARTS = ("visual", "prompt", "concept", "all")


@dataclass(frozen=True)
class SiteSpec:
    """Static description of one site.

    Attributes:
        name: stable name, ``blocks.{l}.attn`` (cross-attention sites of cross-attention DiTs:
            ``blocks.{l}.cross_attn``).
        layer: block index ``l``.
        module_path: dotted path of the model's attention module inside the transformer,
            e.g. ``transformer_blocks.3.attn1``.
        heads: number of attention heads.
        head_dim: channels per head.
        kind: ``"joint"`` (visual + prompt tokens attend jointly), ``"self"`` (visual only) or
            ``"cross"`` (visual queries, prompt keys/values).
        concept_stream: whether the site carries the concept stream (``hook_concept_*``).
        attentions: the roles of the attention calls one call of the site makes, in order:
            ``("main",)``, or e.g. ``("image", "main")`` for Wan image-to-video's cross site,
            which attends to the image context first (``hook_image_k|v|z``).
    """

    name: str
    layer: int
    module_path: str
    heads: int
    head_dim: int
    kind: str = "joint"
    concept_stream: bool = False
    attentions: tuple[str, ...] = ("main",)

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The stable hook points of the site."""
        return HOOK_NAMES + (CONCEPT_HOOK_NAMES if self.concept_stream else ())

    @property
    def extra_hook_names(self) -> tuple[str, ...]:
        """Hook points of the site's extra attention calls (outside the stable set)."""
        return tuple(f"hook_{role}_{tensor}" for role in self.attentions if role != "main" for tensor in "kvz")


@dataclass
class SiteVisit:
    """What an analysis sees at one (step, site) visit, conditional CFG rows only.

    ``tensors`` maps ``"q" | "k" | "v" | "z"`` to ``[batch, heads, tokens, head_dim]`` tensors of
    the joint sequence (full batch) and ``parts`` maps each of them to the token slices of its
    ``"visual"`` and ``"prompt"`` parts. ``concept_tensors`` maps the same letters to
    ``[analysed_batch, heads, C, head_dim]`` tensors of the concept stream (or of prompt
    tokens standing in for concepts, for models without a stream).

    Values several analyses derive from the same visit (QK scores, surrogate positions, frame
    separation scores) are computed once per visit through :meth:`shared`.
    """

    site: SiteSpec
    step: int
    timestep: float
    layout: TokenLayout
    tensors: dict[str, torch.Tensor]
    parts: dict[str, dict[str, slice]]
    concept_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    memo: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def layer(self) -> int:
        return self.site.layer

    def get(self, tensor: str, part: str) -> torch.Tensor:
        """Per-head ``tensor`` (``q``, ``k``, ``v`` or ``z``) of the token ``part`` (``visual``,
        ``prompt``, ``concept`` or ``all``: the site's whole sequence) for the analysed CFG branch's
        rows: ``[rows, heads, n, head_dim]``. Visual tokens are ordered frame, row, column
        (``n = F*h*w``)."""
        if tensor not in TENSOR_NAMES:
            raise KeyError(f"unknown site tensor {tensor!r}; expected one of {TENSOR_NAMES}")
        if part not in TOKEN_PARTS:
            raise KeyError(f"unknown token part {part!r}; expected one of {TOKEN_PARTS}")
        if part == "concept":
            if tensor not in self.concept_tensors:
                raise KeyError(
                    f"site {self.site.name} provides no concept {tensor!r}; it provides "
                    f"{sorted(self.concept_tensors)}"
                )
            return self.concept_tensors[tensor]
        if part == "all":
            if tensor not in self.tensors:
                raise KeyError(f"site {self.site.name} provides no {tensor!r}; it provides {sorted(self.tensors)}")
            return self.tensors[tensor][self.layout.analysed_rows]
        token_slice = self.parts.get(tensor, {}).get(part)
        if token_slice is None:
            raise KeyError(f"site {self.site.name} ({self.site.kind}) has no {part} tokens in {tensor!r}")
        rows = self.layout.analysed_rows
        return self.tensors[tensor][rows, :, token_slice]

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per visit and ``key``: every analysis (and selector) asking for
        the same ``key`` during this visit gets the same value. ``key`` must name everything the
        value depends on besides the visit (e.g. ``("qk_scores", "concept")``). Values must not
        be modified in place by their readers."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def provides(self, tensor: str, part: str) -> bool:
        if part == "concept":
            return tensor in self.concept_tensors
        if part == "all":
            return tensor in self.tensors
        return self.parts.get(tensor, {}).get(part) is not None


class SiteGraph:
    """The installed sites of one transformer, by stable name.

    ``graph["blocks.3.attn"]`` is the site's processor module; ``graph.module(
    "blocks.3.attn.hook_q")`` a hook point; ``graph.path("blocks.3.attn.hook_q")`` the module's
    dotted path inside the transformer (what nnsight and ``named_modules`` call it).
    """

    def __init__(self, transformer: torch.nn.Module, processors: dict[str, "SiteProcessor"]) -> None:
        self.transformer = transformer
        self.processors = processors

    def __getitem__(self, site_name: str) -> "SiteProcessor":
        try:
            return self.processors[site_name]
        except KeyError:
            raise KeyError(
                f"no site named {site_name!r}; sites are {self._names_summary()}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.processors)

    def __len__(self) -> int:
        return len(self.processors)

    @property
    def specs(self) -> list[SiteSpec]:
        return [processor.spec for processor in self.processors.values()]

    def _split(self, hook_name: str) -> tuple["SiteProcessor", str]:
        site_name, _, hook = hook_name.rpartition(".")
        processor = self[site_name]
        if hook not in processor.spec.hook_names:
            raise KeyError(
                f"site {site_name!r} has no hook point {hook!r}; it has {processor.spec.hook_names}"
            )
        return processor, hook

    def module(self, hook_name: str) -> HookPoint:
        """The hook-point module named ``blocks.{l}.attn.hook_*``."""
        processor, hook = self._split(hook_name)
        return getattr(processor, hook)

    def path(self, hook_name: str) -> str:
        """Dotted path of a hook point inside the transformer, e.g.
        ``transformer_blocks.3.attn1.processor.hook_q``."""
        processor, hook = self._split(hook_name)
        return f"{processor.spec.module_path}.processor.{hook}"

    def envoy(self, traced_model, hook_name: str):
        """The nnsight envoy of a hook point, given an ``nnsight.NNsight`` wrapper of the
        transformer: ``graph.envoy(model, "blocks.3.attn.hook_q").output``."""
        envoy = traced_model
        for part in self.path(hook_name).split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def hook_names(self) -> list[str]:
        """Every hook-point name of the graph, in execution order of the sites."""
        return [f"{spec.name}.{hook}" for spec in self.specs for hook in spec.hook_names]

    def _names_summary(self) -> str:
        names = list(self.processors)
        if len(names) <= 4:
            return str(names)
        return f"{names[0]!r} ... {names[-1]!r} ({len(names)} sites)"
