"""Token layout of one attention call: which token ranges are visual, prompt and concept.

Every site tensor has the layout ``[batch, heads, tokens, head_dim]``. The *joint* sequence of a
site (``hook_q``, ``hook_k``, ``hook_v``, ``hook_z``) holds the model's own tokens in the model's
order (CogVideoX: prompt then visual; HunyuanVideo: visual then prompt). Concept tokens never
enter that sequence: they live in the separate concept stream (``hook_concept_*``), whose batch
holds only the analysed CFG branch's rows (``TokenLayout.analysed_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["TokenLayout", "TokenOrder", "causal_frame_spans", "token_layout"]

#: Where the visual tokens sit in a site's token sequences: after the prompt tokens
#: (``"prompt_first"``), before them (``"visual_first"``), or in sequences of their own
#: (``"separate"``: self- and cross-attention DiTs, where each tensor indexes its tokens from 0).
TokenOrder = Literal["prompt_first", "visual_first", "separate"]


def causal_frame_spans(
    token_frames: int, temporal_compression: int, temporal_patch: int = 1, leading_padding: int = 0
) -> tuple[tuple[int, int], ...]:
    """Inclusive ``(first, last)`` pixel frames of each token frame for a causal video VAE.

    A causal VAE with temporal compression ``k`` maps latent frame 0 to pixel frame 0 and latent
    ``l >= 1`` to pixel frames ``k*l - k + 1 .. k*l``. A token frame groups ``temporal_patch``
    latent frames; ``leading_padding`` latent frames prepended by the pipeline (CogVideoX 1.5)
    stand for pixel frame 0.
    """
    k = temporal_compression
    spans = []
    for frame in range(token_frames):
        latents = [max(latent - leading_padding, 0) for latent in range(frame * temporal_patch, (frame + 1) * temporal_patch)]
        spans.append((max(k * latents[0] - k + 1, 0), k * latents[-1]))
    return tuple(spans)


@dataclass(frozen=True)
class TokenLayout:
    """Geometry of the tokens of one transformer call.

    Attributes:
        frames: latent frames ``F`` after temporal patching (tokens along time).
        height: visual token rows ``h`` per latent frame.
        width: visual token columns ``w`` per latent frame.
        visual: slice of the visual tokens (``F * h * w`` of them, frame-major, then row, then
            column) in the joint sequence.
        prompt: slice of the prompt tokens in the joint sequence (empty for sites that hold only
            visual tokens, e.g. self-attention of a cross-attention DiT).
        batch: batch size of the call.
        analysed_rows: rows of the batch that belong to the analysed CFG branch (the conditional
            one unless the trace asks for another; :mod:`vidinterp.branches`).
        prompt_mask: optional ``[batch, prompt_tokens]`` bool, True where a prompt token is real
            (not padding); ``None`` when the model attends to every prompt slot.
        frame_spans: ``(first, last)`` pixel-frame index covered by each latent token frame
            (inclusive); empty when unknown.
        pixels_per_token: ``(y, x)`` pixel size of one visual token cell.
    """

    frames: int
    height: int
    width: int
    visual: slice
    prompt: slice
    batch: int
    analysed_rows: slice
    prompt_mask: torch.Tensor | None = None
    frame_spans: tuple[tuple[int, int], ...] = ()
    pixels_per_token: tuple[int, int] = (1, 1)

    @property
    def visual_tokens(self) -> int:
        """Number of visual tokens ``P = F * h * w``."""
        return self.frames * self.height * self.width

    @property
    def prompt_tokens(self) -> int:
        """Number of prompt-token slots ``T`` (padding included)."""
        return self.prompt.stop - self.prompt.start

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def analysed_batch(self) -> int:
        return len(range(self.batch)[self.analysed_rows])

    def __post_init__(self) -> None:
        expected = self.frames * self.height * self.width
        given = self.visual.stop - self.visual.start
        if given != expected:
            raise ValueError(
                f"visual token range holds {given} tokens, expected F*h*w = "
                f"{self.frames}*{self.height}*{self.width} = {expected}"
            )


def token_layout(frames: int, height: int, width: int, prompt_tokens: int, order: TokenOrder, *, batch: int = 1,
                 frame_spans: tuple[tuple[int, int], ...] = (), pixels_per_token: tuple[int, int] = (1, 1),
                 prompt_mask: torch.Tensor | None = None) -> TokenLayout:
    """The :class:`TokenLayout` of a call on ``frames x height x width`` visual tokens and
    ``prompt_tokens`` prompt slots in the given ``order``; every row analysed."""
    visual = frames * height * width
    if order == "prompt_first":
        prompt, visual_slice = slice(0, prompt_tokens), slice(prompt_tokens, prompt_tokens + visual)
    elif order == "visual_first":
        visual_slice, prompt = slice(0, visual), slice(visual, visual + prompt_tokens)
    elif order == "separate":
        visual_slice, prompt = slice(0, visual), slice(0, prompt_tokens)
    else:
        raise ValueError(f"token order must be 'prompt_first', 'visual_first' or 'separate', got {order!r}")
    return TokenLayout(frames=frames, height=height, width=width, visual=visual_slice, prompt=prompt, batch=batch,
                       analysed_rows=slice(0, batch), prompt_mask=prompt_mask, frame_spans=frame_spans,
                       pixels_per_token=pixels_per_token)
