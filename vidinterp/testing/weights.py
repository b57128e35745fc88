"""Weight programs for planted models: the primitives the planted builders write weights with.

The planted builders (``vidinterp.testing.planted_<family>``) follow the design recipe of
:mod:`vidinterp.testing.planted` (ballast, mirrored features, rotary pairs that turn or not);
this module holds its shared parts, so that a builder keeps only what is specific to its family
(which modules it writes, its channel layout, its text encoders). Units used throughout:

* a residual *feature* is a quantity a token carries as the mirrored channel pair ``(+f, -f)``;
  a *reading* is a ``[width]`` row that reads features back from a LayerNorm'd token;
* q/k *rows* are ``[head_dim, width]`` (weight rows that read a token) or ``[head_dim]`` (a bias:
  a constant every token carries); the reading :data:`CONSTANT` makes a bias;
* a *logit* is a softmax logit after attention's ``1 / sqrt(head_dim)`` scale;
* angles are in radians.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from vidinterp.testing.latent import CLOCK_CHANNEL, COLOR_CHANNELS, PlantedLatentMapping
from vidinterp.testing.planted import PLANTED_WORDS, PlantedDesign, offset_phases

__all__ = [
    "RESIDUAL_BALLAST",
    "HEAD_BALLAST",
    "LOCALISING_LOGIT",
    "SELF_LOGIT",
    "POSITION_LOGIT",
    "SINK_LOGIT",
    "VALUE_GAIN",
    "TURNING",
    "CONSTANT",
    "mirror",
    "unit",
    "zero_parameters",
    "ResidualStream",
    "embed_latent_mean",
    "embed_colour_shares",
    "word_directions",
    "layer_free_t5",
    "match",
    "HeadBallast",
    "QueryKey",
    "RotaryGrid",
    "positional_match",
    "HeadProgram",
    "value_rows",
    "JointVideoLayout",
]

#: ballast ``B`` of the residual stream: every normalised token holds ``(+B, -B)``
RESIDUAL_BALLAST = 32.0
#: ballast ``B`` of a head's q and k vectors before a q/k norm
HEAD_BALLAST = 100.0
#: softmax logits: a fully red token and the word "red" (or another fully red token) in a
#: localising head; the worst gap between a visual query's own key and any other visual key in
#: the localising head's self match; the worst gap between the target key and any other visual
#: key in a motion or identity head; two text tokens meeting in a sink
LOCALISING_LOGIT, SELF_LOGIT, POSITION_LOGIT, SINK_LOGIT = 12.0, 8.0, 6.0, 8.0
#: value (head-output channel) of a feature of 1, e.g. a fully red token in a localising head
VALUE_GAIN = 4.0
#: a constant feature of 1: q/k rows of it (:func:`match`, :func:`positional_match`) are biases
CONSTANT = torch.tensor(1.0)
#: radians per step of some grid axis (modulo 2 pi) above which a rotary pair counts as turning
TURNING = 0.15


# -------------------------------------------------------------------- writing weights
def mirror(weight: torch.Tensor, channel: int, values: torch.Tensor | float) -> None:
    """Write ``values`` to row ``channel`` of ``weight`` and ``-values`` to row ``channel + 1``
    (a mirrored feature)."""
    weight[channel] = values
    weight[channel + 1] = -values


def unit(width: int, channel: int) -> torch.Tensor:
    """The float unit vector ``[width]`` of ``channel``."""
    return torch.nn.functional.one_hot(torch.tensor(channel), width).float()


def zero_parameters(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (without recording gradients); returns it."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return module


@dataclass(frozen=True)
class ResidualStream:
    """A residual stream of ``width`` channels whose tokens all hold the ballast ``(+B, -B)``
    (``B`` = ``ballast``) and otherwise small mirrored features, so that a LayerNorm divides
    every token by nearly the same :attr:`spread`."""

    width: int
    ballast: float = RESIDUAL_BALLAST

    @property
    def spread(self) -> float:
        """A LayerNorm's divisor for a ballast-dominated token: ``sqrt(2 B^2 / width)``."""
        return (2 * self.ballast**2 / self.width) ** 0.5

    def reading(self, *channels: int) -> torch.Tensor:
        """A ``[width]`` row reading the sum of the mirrored features at ``channels`` from a
        LayerNorm output: ``(y_c - y_{c+1}) / 2`` cancels the norm's mean exactly, and the
        factor :attr:`spread` undoes its division, so a feature of value 1 reads as 1."""
        row = torch.zeros(self.width)
        for channel in channels:
            row[channel] += self.spread / 2
            row[channel + 1] -= self.spread / 2
        return row


def embed_latent_mean(weight: torch.Tensor, channel: int, latent_channel: int, scale: float) -> None:
    """Make the mirrored residual feature at ``channel`` of a patch embedding ``weight``
    ``[width, latent channels, *patch]`` the mean of latent channel ``latent_channel`` over the
    patch, times ``scale``."""
    patch = weight.shape[2:]
    mirror(weight[:, latent_channel], channel, torch.full(patch, scale / math.prod(patch)))


def embed_colour_shares(weight: torch.Tensor, channels: dict[str, int]) -> None:
    """Make the mirrored residual feature at ``channels[colour]`` of a patch embedding ``weight``
    ``[width, latent channels, *patch]`` the share of the token's pixels of that palette colour
    (:class:`~vidinterp.testing.latent.PlantedLatentMapping` writes a colour's share times its
    ``amplitude`` in the colour's latent channel)."""
    amplitude = PlantedLatentMapping().config.amplitude
    for colour, channel in channels.items():
        embed_latent_mean(weight, channel, COLOR_CHANNELS.index(colour), 1 / amplitude)


# -------------------------------------------------------------------- text encoders
def word_directions(table: torch.Tensor, tokenizer, directions: dict[str, int], other: int | None = None) -> None:
    """Fill a word-embedding ``table`` ``[vocabulary, width]``: the token spelled ``word`` embeds
    as the unit vector of channel ``directions[word]``, every other token as the unit vector of
    channel ``other`` (zero when ``None``)."""
    with torch.no_grad():
        table.zero_()
        if other is not None:
            table[:, other] = 1.0
        for word, channel in directions.items():
            index = tokenizer.convert_tokens_to_ids(word)
            table[index] = 0.0
            table[index, channel] = 1.0


def layer_free_t5(tokenizer, width: int, directions: dict[str, int], other: int, *, umt5: bool = False) -> nn.Module:
    """A ``T5EncoderModel`` (``UMT5EncoderModel`` if ``umt5``) of width ``width`` with no layers,
    whose word embeddings are :func:`word_directions`; its final RMS norm (weight 1) turns a
    unit direction into ``sqrt(width)`` times it."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config, model = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    encoder = model(config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=width, num_layers=0, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    word_directions(encoder.shared.weight, tokenizer, directions, other)
    with torch.no_grad():
        encoder.encoder.final_layer_norm.weight.fill_(1.0)
    return encoder


# -------------------------------------------------------------------- attention heads
def match(head_dim: int, channel: int, reading: torch.Tensor, logit: float, *, mirrored: bool = False) -> torch.Tensor:
    """q or k rows ``[head_dim, *reading.shape]`` putting ``g f`` in head channel ``channel``
    (``f`` the feature ``reading`` reads), or the mirrored ``(g f, -g f)`` in ``channel``,
    ``channel + 1``: a query and a key whose features are 1 score ``logit``. Use it in a head
    channel that rotary does not turn."""
    copies = 2 if mirrored else 1
    gain = (logit * head_dim**0.5 / copies) ** 0.5
    rows = torch.zeros(head_dim, *reading.shape)
    if mirrored:
        mirror(rows, channel, gain * reading)
    else:
        rows[channel] = gain * reading
    return rows


@dataclass(frozen=True)
class HeadBallast:
    """The ballast of a head's q and k vectors before a q/k norm (LayerNorm or RMSNorm): the
    projection bias puts ``B`` (``value``) in head channel ``channel``, and ``-B`` in
    ``channel + 1`` when ``mirrored``, so the norm divides every token's head vector by nearly
    the same :attr:`spread`; the norm's weight (:meth:`norm_weight`) undoes that division and is
    zero on the ballast channels, which so never reach the scores."""

    head_dim: int
    channel: int
    value: float = HEAD_BALLAST
    mirrored: bool = True

    @property
    def channels(self) -> list[int]:
        """Head channels holding the ballast."""
        return [self.channel, self.channel + 1] if self.mirrored else [self.channel]

    @property
    def spread(self) -> float:
        """Root mean square of a head vector holding only the ballast, ``B sqrt(len(channels) /
        head_dim)`` (also its LayerNorm spread when mirrored, whose mean is zero)."""
        return self.value * (len(self.channels) / self.head_dim) ** 0.5

    def bias(self) -> torch.Tensor:
        """The q or k bias ``[head_dim]`` holding the ballast."""
        bias = torch.zeros(self.head_dim)
        if self.mirrored:
            mirror(bias, self.channel, self.value)
        else:
            bias[self.channel] = self.value
        return bias

    def norm_weight(self) -> torch.Tensor:
        """The q/k norm's weight ``[head_dim]``: :attr:`spread`, zero on the ballast channels."""
        weight = torch.full((self.head_dim,), self.spread)
        weight[self.channels] = 0.0
        return weight


@dataclass(frozen=True)
class QueryKey:
    """The q and k rows of one head program (both ``[head_dim, width]`` or both ``[head_dim]``)."""

    query: torch.Tensor
    key: torch.Tensor

    @staticmethod
    def same(rows: torch.Tensor) -> QueryKey:
        """A symmetric program: q = k = ``rows``."""
        return QueryKey(rows, rows)

    def __add__(self, other: QueryKey) -> QueryKey:
        return QueryKey(self.query + other.query, self.key + other.key)


@dataclass(frozen=True)
class RotaryGrid:
    """The rotary angles of a native grid of visual tokens.

    Attributes:
        angles: ``[tokens, head_dim / 2]`` angle of each rotary pair at each token (radians;
            :func:`~vidinterp.testing.planted.rotary_angles`), tokens row-major over ``shape``.
        shape: ``(frames, rows, columns)`` of the grid (one frame for images).
    """

    angles: torch.Tensor
    shape: tuple[int, int, int]

    def token(self, frame: int, row: int, column: int) -> int:
        """Index of the token at ``(frame, row, column)``."""
        _, rows, columns = self.shape
        return (frame * rows + row) * columns + column

    def turning_pairs(self, reserved: Iterable[int] = ()) -> list[int]:
        """Rotary pairs ``m`` whose angle changes by more than :data:`TURNING` (modulo 2 pi) per
        step along some axis of more than one token, except the pairs of the ``reserved`` head
        channels."""
        unit_steps = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
        neighbours = [self.token(*step) for step, size in zip(unit_steps, self.shape) if size > 1]
        steps = self.angles[neighbours] - self.angles[self.token(0, 0, 0)]  # [axes, pairs]
        reserved_pairs = {channel // 2 for channel in reserved}
        return [m for m in range(self.angles.shape[1])
                if float(torch.cos(steps[:, m]).min()) < math.cos(TURNING) and m not in reserved_pairs]

    def targets(self, frames_back: int) -> torch.Tensor:
        """``[tokens]``: the token at the same row and column ``frames_back`` frames earlier,
        ``-1`` where there is none."""
        tokens = torch.arange(len(self.angles))
        offset = frames_back * self.shape[1] * self.shape[2]
        return torch.where(tokens >= offset, tokens - offset, -1)

    def phases(self, frames_back: int) -> torch.Tensor:
        """``[pairs]`` phases ``delta`` that make a positional match peak ``frames_back`` frames
        back (:func:`~vidinterp.testing.planted.offset_phases`)."""
        return offset_phases(self.angles, self.token(frames_back, 0, 0), self.token(0, 0, 0))

    def gain(self, pairs: list[int], frames_back: int, logit: float, head_dim: int) -> float:
        """The gain ``g`` of :func:`positional_match` that makes the worst gap between a query's
        target key (:meth:`targets`) and any other key of the grid ``logit``, over the queries
        that have a target."""
        phases = self.phases(frames_back)[pairs]
        difference = self.angles[:, None, pairs] - self.angles[None, :, pairs] - phases
        scores = torch.cos(difference).sum(dim=-1)  # [queries, keys], per unit g^2
        targets = self.targets(frames_back)
        queries = (targets >= 0).nonzero().squeeze(1)
        best = scores[queries, targets[queries]]
        others = scores[queries].clone()
        others[torch.arange(len(queries)), targets[queries]] = -math.inf
        gap = float((best - others.max(dim=1).values).min())
        return (logit * head_dim**0.5 / gap) ** 0.5


def positional_match(grid: RotaryGrid, pairs: list[int], *, frames_back: int, logit: float, head_dim: int,
                     reading: torch.Tensor) -> QueryKey:
    """q and k rows ``[head_dim, *reading.shape]`` matching each visual query with the key at its
    own row and column ``frames_back`` frames earlier, through rotary: q = ``g f (1, 0)`` and k =
    ``g f (cos delta_m, sin delta_m)`` in every pair ``m`` of ``pairs`` (``f`` the feature
    ``reading`` reads, e.g. a visual indicator, or a constant 1; ``delta`` from
    :meth:`RotaryGrid.phases`). After rotary, query ``i`` scores key ``j`` ``g^2 f^2 sum_m
    cos(phi_m(i) - phi_m(j) - delta_m)``, largest where ``phi(j) = phi(i) - delta``; the gain
    (:meth:`RotaryGrid.gain`) makes the worst gap to any other key ``logit``."""
    gain = grid.gain(pairs, frames_back, logit, head_dim)
    phases = grid.phases(frames_back)
    query, key = torch.zeros(head_dim, *reading.shape), torch.zeros(head_dim, *reading.shape)
    for m in pairs:
        query[2 * m] = gain * reading
        key[2 * m] = gain * math.cos(float(phases[m])) * reading
        key[2 * m + 1] = gain * math.sin(float(phases[m])) * reading
    return QueryKey(query, key)


@dataclass(frozen=True)
class HeadProgram:
    """One planted head: its q/k rows and its value readings ``{head channel: [width] reading}``
    (written as :func:`value_rows`)."""

    qk: QueryKey
    value: dict[int, torch.Tensor]


def value_rows(head_dim: int, width: int, readings: dict[int, torch.Tensor]) -> torch.Tensor:
    """v rows ``[head_dim, width]``: :data:`VALUE_GAIN` times ``readings[c]`` (a ``[width]``
    reading) in head channel ``c``, zero elsewhere."""
    rows = torch.zeros(head_dim, width)
    for channel, reading in readings.items():
        rows[channel] = VALUE_GAIN * reading
    return rows


def write_head(attn: nn.Module, head: int, *, query: torch.Tensor | None = None,
               query_bias: torch.Tensor | None = None, key: torch.Tensor | None = None,
               key_bias: torch.Tensor | None = None, value: dict[int, torch.Tensor]) -> None:
    """Write one head of a diffusers ``Attention``-like module with separate ``to_q``/``to_k``/
    ``to_v``: q/k rows ``[head_dim, width]`` and biases ``[head_dim]`` (absent: left as they
    are, zero in a planted model), and the v rows :func:`value_rows` of ``value``."""
    head_dim = attn.to_v.weight.shape[0] // attn.heads
    rows = slice(head * head_dim, (head + 1) * head_dim)
    for linear, weight, bias in ((attn.to_q, query, query_bias), (attn.to_k, key, key_bias)):
        if weight is not None:
            linear.weight[rows] = weight
        if bias is not None:
            linear.bias[rows] = bias
    attn.to_v.weight[rows] = value_rows(head_dim, attn.to_v.weight.shape[1], value)


def add_ballast_across_heads(attn: nn.Module, ballast: HeadBallast) -> None:
    """Add ``ballast`` to every head's q and k bias and set the q/k RMSNorm that spans all heads
    (``norm_q``/``norm_k`` of width ``heads * head_dim``) to its weight: the norm then divides
    by nearly :attr:`HeadBallast.spread` and its weight undoes it, leaving every planted channel
    unchanged."""
    for linear, norm in ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k)):
        linear.bias.add_(ballast.bias().repeat(attn.heads))
        norm.weight.copy_(ballast.norm_weight().repeat(attn.heads))


def unit_text_projection(projection: nn.Module, channels: dict[int, int], text_dim: int) -> None:
    """A diffusers ``PixArtAlphaTextProjection`` (``linear_1``, tanh-GELU, ``linear_2``) writing
    exactly 1 in text-stream channel ``c`` for T5 direction ``channels[c]``: T5's final RMS
    norm turns a unit direction into ``sqrt(text_dim)`` times it, ``linear_1`` brings it back to
    1, the GELU maps 1 to ``gelu(1)`` and ``linear_2`` divides that out."""
    unit_gelu = 1 / torch.nn.functional.gelu(torch.tensor(1.0), approximate="tanh")
    for channel, t5 in channels.items():
        projection.linear_1.weight[channel, t5] = text_dim**-0.5
        projection.linear_2.weight[channel, channel] = unit_gelu


# -------------------------------------------------------------------- one layout for visual and text tokens
@dataclass(frozen=True)
class JointVideoLayout:
    """The channel layout of a planted video transformer whose visual and text tokens share one
    residual layout and one attention program (the CogVideoX and HunyuanVideo builders), and the
    embeddings and head programs written in it. Every residual feature is a mirrored pair of
    ``residual``: the ballast; a visual and a text indicator (1 on visual / text tokens); per
    planted word, the share of its colour (visual tokens) and the word itself (text tokens: 1 for
    the word); the latent clock (visual tokens).

    Attributes:
        residual: the residual stream.
        ballast, visual, text, clock: residual channels of the ballast, the visual and the text
            indicator, and the clock.
        words: per planted word, ``(visual channel, text channel, head pair)``: the residual
            channels of its colour share and of the word, and the first head channel of the pair
            in which the localising head matches them.
        sink_pair: first head channel of the pair in which text tokens meet each other in the
            motion and identity heads.
        qk_ballast: the ballast of every head's q and k (its ``head_dim`` is the heads').
    """

    residual: ResidualStream
    ballast: int
    visual: int
    text: int
    clock: int
    words: dict[str, tuple[int, int, int]]
    sink_pair: int
    qk_ballast: HeadBallast

    def embed_visual(self, weight: torch.Tensor, bias: torch.Tensor, clock_scale: float) -> None:
        """Write a patch embedding (``weight`` ``[width, latent channels, *patch]``, ``bias``
        ``[width]``): each word's colour share, the latent clock channel's mean times
        ``clock_scale``, the ballast and the visual indicator."""
        embed_colour_shares(weight, {PLANTED_WORDS[word]: visual for word, (visual, _, _) in self.words.items()})
        embed_latent_mean(weight, self.clock, CLOCK_CHANNEL, clock_scale)
        mirror(bias, self.ballast, self.residual.ballast)
        mirror(bias, self.visual, 1.0)

    def embed_text(self, weight: torch.Tensor, bias: torch.Tensor, directions: dict[str, int], scale: float) -> None:
        """Write a text projection (``weight`` ``[width, text width]``, ``bias`` ``[width]``)
        from text embeddings in which each planted word is ``1 / scale`` times the unit vector of
        channel ``directions[word]``: the word features, the ballast and the text indicator."""
        for word, (_, text, _) in self.words.items():
            mirror(weight, text, unit(weight.shape[1], directions[word]) * scale)
        mirror(bias, self.ballast, self.residual.ballast)
        mirror(bias, self.text, 1.0)

    def head_programs(self, design: PlantedDesign, heads: int, grid: RotaryGrid) -> dict[tuple[int, int], HeadProgram]:
        """The program of every planted head, by ``(layer, head)`` of ``design``:

        * localising: q = k = each word's colour share and the word (visual and text tokens
          alike, in the word's head pair, :data:`LOCALISING_LOGIT`) plus a visual self match
          (:data:`SELF_LOGIT`); v = the colour shares (head channel ``i`` for the ``i``-th word);
        * motion: q = k = the text sink (:data:`SINK_LOGIT`) plus a visual match one frame back
          (:data:`POSITION_LOGIT`); v = the clock in head channel 0;
        * every head of the identity layer: the sink plus a visual self match; v = 0.

        The positional matches read the visual indicator in the turning pairs of ``grid`` (the
        native visual tokens) outside the reserved pairs."""
        reading, head_dim = self.residual.reading, self.qk_ballast.head_dim
        pairs = [pair for _, _, pair in self.words.values()]
        turning = grid.turning_pairs(reserved=(*self.qk_ballast.channels, self.sink_pair, *pairs))

        def positional(frames_back: int, logit: float) -> QueryKey:
            return positional_match(grid, turning, frames_back=frames_back, logit=logit, head_dim=head_dim,
                                    reading=reading(self.visual))

        words = QueryKey.same(sum(match(head_dim, pair, reading(visual, text), LOCALISING_LOGIT, mirrored=True)
                                  for visual, text, pair in self.words.values()))
        sink = QueryKey.same(match(head_dim, self.sink_pair, reading(self.text), SINK_LOGIT, mirrored=True))
        programs = {(design.identity_layer, head): HeadProgram(sink + positional(0, POSITION_LOGIT), {})
                    for head in range(heads)}
        colour_values = {i: reading(visual) for i, (visual, _, _) in enumerate(self.words.values())}
        programs[design.localising] = HeadProgram(words + positional(0, SELF_LOGIT), colour_values)
        programs[design.motion] = HeadProgram(sink + positional(1, POSITION_LOGIT), {0: reading(self.clock)})
        return programs
