"""Concepts as words of the prompt: where each concept's tokens sit in the tokenized prompt.

Cross-attention DiTs (Wan) have no concept stream, so a concept must be a word of the prompt and
its maps read the prompt tokens of that word; QK matching against prompt keys (the official
IMAP code's option) reads them too. :func:`locate_prompt_words` finds, for each concept, the
token positions of its first occurrence in the prompt as the pipeline tokenizes it, matched
case-insensitively as a word or a run of words by character offsets, so any fast tokenizer
works. The result selects those tokens from any ``[batch, heads, T, head_dim]`` prompt tensor
(:meth:`PromptWords.gather`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from vidinterp.adapter import ConceptReduction, reduce_concept_rows

__all__ = ["PromptWords", "locate_prompt_words", "prompt_word_list", "concept_span"]

#: A word of a prompt: letters/digits, optionally joined by an apostrophe or hyphen.
_WORD = re.compile(r"\w+(?:['\u2019-]\w+)*")


def prompt_word_list(text: str) -> list[str]:
    """The words of ``text``, in order."""
    return _WORD.findall(text)


def concept_span(prompt: str, concept: str) -> tuple[int, int] | None:
    """Character span ``(start, end)`` in ``prompt`` of the first run of its words that equals
    ``concept``'s words, case-insensitively; ``None`` when there is none (or ``concept`` has no
    words)."""
    found = list(_WORD.finditer(prompt))
    words = [match.group().lower() for match in found]
    target = [word.lower() for word in prompt_word_list(concept)]
    for i in range(len(found) - len(target) + 1):
        if target and words[i:i + len(target)] == target:
            return found[i].start(), found[i + len(target) - 1].end()
    return None


@dataclass
class PromptWords:
    """Concepts located among the prompt tokens of a call.

    Attributes:
        names: concept names, in order (``C`` of them).
        prompt: the prompt text as it was tokenized.
        words: the prompt's words, in order.
        positions: token positions (in the transformer's prompt sequence) of each concept's
            sub-tokens.
        pieces: the tokenizer's pieces at those positions.
        reduction: ``"first"`` or ``"mean"`` over a concept's sub-tokens.
        weights: ``[C, n]`` float32 selection matrix over the first ``n`` prompt tokens (``n`` =
            last concept position + 1): row ``c`` is one-hot at concept ``c``'s first sub-token
            (``"first"``) or uniform over its sub-tokens (``"mean"``).
    """

    names: list[str]
    prompt: str
    words: list[str]
    positions: list[list[int]]
    pieces: list[list[str]]
    reduction: ConceptReduction
    weights: torch.Tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Prompt-token keys or values ``[batch, heads, T, head_dim]`` -> the concepts' rows,
        reduced over sub-tokens: ``[batch, heads, C, head_dim]`` (float32 sum, cast back;
        exact for ``"first"``)."""
        needed = self.weights.shape[1]
        if tensor.shape[2] < needed:
            raise ValueError(
                f"concept tokens reach prompt position {needed - 1}, but this call holds only "
                f"{tensor.shape[2]} prompt tokens; encode the prompt with a longer max_sequence_length"
            )
        weights = self.weights.to(tensor.device)
        return torch.einsum("ct,bhtd->bhcd", weights, tensor[:, :, :needed].float()).to(tensor.dtype)


def locate_prompt_words(
    tokenizer,
    prompt: str,
    concepts: list[str],
    reduction: ConceptReduction,
    *,
    max_length: int,
    offset: int = 0,
    model: str = "this model",
) -> PromptWords:
    """Locate each concept among the tokens of ``prompt``.

    Args:
        tokenizer: a fast tokenizer (offset mappings are needed).
        prompt: the prompt exactly as the pipeline tokenizes it (after its own cleaning).
        concepts: concept names; each must be a word or a run of words of the prompt.
        reduction: how :attr:`PromptWords.weights` reduces a concept's sub-tokens.
        max_length: prompt tokens the pipeline keeps (special tokens included).
        offset: where token 0 of this tokenization sits in the transformer's prompt sequence.
        model: named in error messages.

    Raises:
        ValueError: naming the prompt's words when a concept is not among them, or when it lies
            beyond the kept tokens. Warns (as :func:`~vidinterp.adapter.reduce_concept_rows`)
            when a concept covers several tokens.
        TypeError: for a tokenizer without offset mappings.
    """
    words = prompt_word_list(prompt)
    try:
        encoding = tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=max_length,
                             return_offsets_mapping=True)
    except NotImplementedError as error:
        raise TypeError(
            f"mapping concepts to prompt tokens needs a fast tokenizer with offset mappings; "
            f"{type(tokenizer).__name__} has none ({error})"
        ) from None
    offsets = encoding["offset_mapping"]
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    positions, pieces = [], []
    for name in concepts:
        span = concept_span(prompt, name)
        if span is None:
            raise ValueError(
                f"concept {name!r} is not a word of the prompt {prompt!r}; {model} reads concepts from the "
                f"prompt, so concepts must be prompt words: {list(dict.fromkeys(words))}"
            )
        places = [index for index, (start, end) in enumerate(offsets) if end > start and start < span[1] and end > span[0]]
        if not places:
            raise ValueError(f"concept {name!r} lies beyond the {max_length} prompt tokens the pipeline keeps")
        positions.append([offset + index for index in places])
        pieces.append([tokens[index] for index in places])
    width = max(max(places) for places in positions) + 1
    selection = torch.eye(width).expand(len(concepts), width, width)
    weights = reduce_concept_rows(selection, positions, list(concepts), pieces, reduction)
    return PromptWords(list(concepts), prompt, words, positions, pieces, reduction, weights)
