"""The concept stream, run by the core for every joint-attention family.

Concepts that need not appear in the prompt travel through the transformer next to the prompt
tokens: each block updates them with the *prompt stream's* weights (its adaptive-norm
modulation, q/k/v projections and q/k norms, output projection, gates, MLP), they attend to
``[concepts ; visual tokens]`` only, and nothing attends to them, so the model's output is
untouched (ConceptAttention's construction; docs/methods.md, "Concept stream"). Only the ``C``
concept query rows are computed.

An adapter declares what is model-specific (:class:`ConceptStreamSpec`): which module projects a
concept embedding into the stream, which of the attention module's submodules are the prompt
stream's projections (:class:`ConceptProjections`), and how a block modulates and updates its
prompt tokens (a :class:`StreamModulation`). :class:`ConceptStream` holds the running state of one
transformer call and does the rest.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vidinterp.sites import SiteProcessor

__all__ = [
    "ConceptProjections",
    "StreamModulation",
    "AdaNormZeroModulation",
    "ConceptStreamSpec",
    "ConceptStream",
    "concept_state",
]


@dataclass(frozen=True)
class ConceptProjections:
    """Dotted names, on an attention module, of the prompt stream's projections.

    Attributes:
        query, key, value: ``[.., dim] -> [.., heads * head_dim]`` projections.
        query_norm, key_norm: per-head q/k norms (``None``: none).
        output: modules applied in order to the merged heads (``()``: the block ends the prompt
            stream, e.g. SD3's last block; the concepts attend but are not updated).
        fused: a fused q/k/v projection used instead when the module's ``fused_projections``
            flag is set (``None``: never fused).
    """

    query: str
    key: str
    value: str
    query_norm: str | None
    key_norm: str | None
    output: tuple[str, ...]
    fused: str | None = None

    def resolve(self, attn: nn.Module, name: str | None) -> nn.Module | None:
        if name is None:
            return None
        return functools.reduce(lambda module, part: getattr(module, part, None), name.split("."), attn)


class StreamModulation(ABC):
    """How a block modulates its prompt tokens before attention and updates them after it."""

    @abstractmethod
    def before(self, block: nn.Module, hidden: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``(attention input [B_c, S, dim], state for after)`` of the concept hidden states
        ``[B_c, S, dim]`` (``S`` concept slots: the concepts, then any padding) under the
        conditioning embedding ``temb`` (the analysed rows)."""

    @abstractmethod
    def after(self, block: nn.Module, hidden: torch.Tensor, attention_output: torch.Tensor | None,
              state: Any) -> torch.Tensor:
        """The block's update of ``hidden`` given the concepts' projected attention output
        (``None`` in a block that ends the prompt stream)."""


class AdaNormZeroModulation(StreamModulation):
    """The dual-stream blocks of diffusers' MM-DiTs (Flux, SD3, HunyuanVideo): ``norm1_context``
    (``AdaLayerNormZero``: normed input, attention gate, MLP shift, scale and gate; a block whose
    prompt stream ends has an ``AdaLayerNormContinuous`` instead), then ``hidden + gate_msa *
    attention``, ``norm2_context`` and the gated ``ff_context``. ``clip_float16`` clips the update
    to the float16 range, as Flux's and SD3's blocks do."""

    def __init__(self, clip_float16: bool = False) -> None:
        self.clip_float16 = clip_float16

    def before(self, block, hidden, temb):
        if getattr(block, "context_pre_only", False):
            return block.norm1_context(hidden, temb), None
        normed, *modulation = block.norm1_context(hidden, emb=temb)
        return normed, modulation

    def after(self, block, hidden, attention_output, state):
        if state is None:
            return hidden
        gate_msa, shift_mlp, scale_mlp, gate_mlp = state
        hidden = hidden + gate_msa.unsqueeze(1) * attention_output
        normed = block.norm2_context(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        if self.clip_float16 and hidden.dtype == torch.float16:
            hidden = hidden.clip(-65504, 65504)
        return hidden


@dataclass(frozen=True)
class ConceptStreamSpec:
    """What an adapter declares about its model's concept stream.

    Attributes:
        enter: ``enter(call_arguments, rows, like) -> [B_c, S, dim]``: the concept hidden states (``S``
            concept slots)
            entering the first stream block of a transformer call (``call_arguments``: the
            call's bound arguments by name; ``rows``: the analysed rows; ``like``: a tensor of the
            stream's device and dtype). Called lazily at the first stream block.
        projections: the prompt stream's projections on each stream site's attention module.
        modulation: the prompt stream's block-level modulation and update.
        temb: name of the blocks' conditioning-embedding argument.
    """

    enter: Callable[[dict[str, Any], slice, torch.Tensor], torch.Tensor]
    projections: ConceptProjections
    modulation: StreamModulation
    temb: str = "temb"


def _heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, tokens, heads * head_dim]`` -> ``[B, heads, tokens, head_dim]``."""
    return tensor.unflatten(-1, (-1, head_dim)).transpose(1, 2)


class ConceptStream:
    """Running state of the concepts through the stream blocks of one transformer call.

    ``hidden`` (``[B_c, S, dim]``: ``B_c`` analysed rows, ``S`` concept slots) restarts at every call
    (:meth:`begin`), enters at the first stream block and is updated after each one.
    """

    def __init__(self, spec: ConceptStreamSpec) -> None:
        self.spec = spec
        self.call: dict[str, Any] = {}
        self.rows = slice(0)
        self.hidden: torch.Tensor | None = None
        self._attention_input: torch.Tensor | None = None
        self._attention_output: torch.Tensor | None = None
        self._state: Any = None

    def begin(self, call_arguments: dict[str, Any], rows: slice) -> None:
        """Restart for a transformer call (its arguments by name; the analysed rows)."""
        self.call, self.rows, self.hidden = call_arguments, rows, None

    def before_block(self, block: nn.Module, temb: torch.Tensor) -> None:
        """Modulate the concepts as ``block`` modulates its prompt tokens (``temb``: the
        analysed rows of the block's conditioning embedding)."""
        if self.hidden is None:
            self.hidden = self.spec.enter(self.call, self.rows, temb)
        self._attention_input, self._state = self.spec.modulation.before(block, self.hidden, temb)
        self._attention_output = None

    def after_block(self, block: nn.Module) -> None:
        self.hidden = self.spec.modulation.after(block, self.hidden, self._attention_output, self._state)
        self._attention_input = self._attention_output = self._state = None

    def attend(self, site: "SiteProcessor", attn: nn.Module, visual_key: torch.Tensor,
               visual_value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The concepts' attention at one stream site: only the ``C`` concept query rows, with
        the prompt stream's projections, attending to ``[concepts ; visual]``.

        Args:
            site: the site processor (its ``hook_concept_*`` points).
            attn: the site's attention module.
            visual_key, visual_value: ``[B_c, heads, P, head_dim]`` visual keys (after q/k norm
                and rotary) and values of the site's joint call.

        Returns:
            ``{"q", "k", "v", "z"}``: ``[B_c, heads, C, head_dim]`` concept tensors (after the
            hook points). Sets the projected output the block's update adds.
        """
        projections = self.spec.projections
        head_dim = visual_key.shape[-1]
        concepts = self._attention_input
        fused = projections.resolve(attn, projections.fused) if getattr(attn, "fused_projections", False) else None
        if fused is not None:
            parts = fused(concepts).chunk(3, dim=-1)
        else:
            parts = [projections.resolve(attn, name)(concepts) for name in (projections.query, projections.key, projections.value)]
        query, key, value = (_heads(part, head_dim) for part in parts)
        query_norm, key_norm = projections.resolve(attn, projections.query_norm), projections.resolve(attn, projections.key_norm)
        if query_norm is not None:
            query = query_norm(query)
        if key_norm is not None:
            key = key_norm(key)
        query, key, value = site.hook_concept_q(query), site.hook_concept_k(key), site.hook_concept_v(value)
        keys = torch.cat([key, visual_key.to(key.dtype)], dim=2)
        values = torch.cat([value, visual_value.to(value.dtype)], dim=2)
        output = site.hook_concept_z(F.scaled_dot_product_attention(query, keys, values))
        merged = output.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if projections.output and projections.resolve(attn, projections.output[0]) is not None:
            for name in projections.output:
                merged = projections.resolve(attn, name)(merged)
            self._attention_output = merged
        return {"q": query, "k": key, "v": value, "z": output}


def concept_state(adapter, concepts, prompt: str | None):
    """What carries a trace's concepts: the adapter's :class:`ConceptStream`, or, for a family
    whose concepts are words of the prompt, the concepts located among the prompt tokens
    (:class:`~vidinterp.prompt_words.PromptWords`).

    Raises:
        ValueError: for a prompt-word family without a prompt.
    """
    spec = adapter.concept_stream(concepts)
    if spec is not None:
        return ConceptStream(spec)
    if not prompt:
        raise ValueError(
            f"{adapter.family} has no concept stream: concepts {concepts.names} must be words of the prompt, so a "
            f"prompt is needed (trace(..., prompt=...) or hooked(..., prompt=...))"
        )
    return adapter.prompt_words(prompt, concepts.names, concepts.reduction)
