"""MeViS (motion expressions video segmentation) reader: one clip per (video, expression).

Layout read (the release, one folder per split; ``root`` is the folder holding the split
folders, or a split folder itself)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json
        {"videos": {<video>: {"expressions": {<exp_id>: {"exp": <text>, "obj_id": [...],
                                                          "anno_id": [...]}},
                              "frames": [<frame>, ...]}}}
    <root>/<split>/mask_dict.json
        {<anno_id>: [<COCO RLE {"size": [h, w], "counts": <compressed string>}> or null, ...]}

``mask_dict.json`` holds one entry per frame of the video (``null``: the object is absent from
that frame). The ``valid`` split of the release ships no masks; use ``valid_u`` (the default) or
``train``.

Records: ``clip_id`` is ``<video>__<exp_id>`` (sanitised, :func:`~vidinterp.datasets._files.safe_clip_id`);
``caption`` is the expression; one mask per referred object (``mask_ids`` = the expression's
``obj_id`` s, ``mask_names`` empty), decoded from its ``anno_id``. Concepts are the expression's
motion words (:func:`motion_words`), each mapped to all referred objects (the union of the
expression's ``anno_id`` masks); ``motion_words`` = those concepts. An expression with no motion
word gets the whole expression as its only concept (mapped to the same objects) and no motion
words.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vidinterp.datasets._files import (clip_index, layout_error, read_json, read_rgb_frames, safe_clip_id,
                                       indexed_clip)
from vidinterp.datasets.records import ClipRecord
from vidinterp.prompt_words import prompt_word_list

__all__ = ["MevisSource", "decode_coco_rle", "motion_words", "MOTION_VERBS", "LAYOUT"]

LAYOUT = ("the MeViS layout <root>/<split>/JPEGImages/<video>/<frame>.jpg with <root>/<split>/meta_expressions.json "
          "and <root>/<split>/mask_dict.json (COCO RLE masks per anno_id)")

#: Base forms of the verbs counted as motion words; inflections (``-s``, ``-es``, ``-ies``,
#: ``-ed``, ``-ied``, ``-ing``, doubled consonants, dropped ``e``) are recognised by rule.
MOTION_VERBS: frozenset[str] = frozenset("""
    move walk run jump hop leap skip turn fly swim dive float glide hover crawl climb slide roll spin
    rotate twist swing sway bounce shake nod wave flap wag kick push pull drag carry lift drop throw catch
    chase follow race rush dash wander trot gallop charge ride drive park reverse overtake pass cross
    enter leave exit approach retreat escape go come arrive return stop start pause sit stand lie kneel
    crouch bend lean stretch reach grab pick hold eat drink bite chew lick sniff peck graze fight hit
    punch attack play dance shift descend ascend rise fall sink accelerate slow stride march jog sprint
    paddle skate pedal steer tow haul gather scatter swap stir wiggle wriggle fidget struggle flee pounce
    nudge rub scratch peek
""".split())

#: Irregular past forms of the verbs above (``left`` is excluded: in MeViS it is mostly a direction).
_IRREGULAR = frozenset("""ran flew swam dove went came rode drove threw caught fell rose sank sat stood lay knelt
    held ate drank bit fought swung""".split())

#: Words ending in ``-ing`` that are not verb forms.
_NOT_VERBS = frozenset("""thing something anything nothing everything ceiling building clothing morning evening
    ring king wing string spring during sibling pudding railing painting ping ding""".split())


def _stems(word: str) -> set[str]:
    """Candidate base forms of ``word`` under regular English inflection."""
    stems = {word}
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            stem = word[: -len(suffix)]
            stems |= {stem, stem + "e"}
            if len(stem) > 2 and stem[-1] == stem[-2]:
                stems.add(stem[:-1])
    if word.endswith("ied") or word.endswith("ies"):
        stems.add(word[:-3] + "y")
    if word.endswith("es"):
        stems.add(word[:-2])
    if word.endswith("s"):
        stems.add(word[:-1])
    return stems


def motion_words(text: str) -> tuple[str, ...]:
    """The motion words of ``text``, lower case, in order of first occurrence, without repeats.

    Rule: a word counts when it is an inflection of one of :data:`MOTION_VERBS`, an irregular past
    of one of them, or any other word ending in ``-ing`` (at least 5 letters) that is not a known
    noun/preposition (``thing``, ``building``, ``during``, ...).
    """
    found: list[str] = []
    for word in (w.lower() for w in prompt_word_list(text)):
        motion = (bool(_stems(word) & MOTION_VERBS) or word in _IRREGULAR
                  or (word.endswith("ing") and len(word) >= 5 and word not in _NOT_VERBS))
        if motion and word not in found:
            found.append(word)
    return tuple(found)


def _rle_counts(counts: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string (6-bit chunks offset by 48; a 0x20 bit
    continues the number, 0x10 in the last chunk is the sign; from the third run on, each value
    is the difference to the run two places back)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = shift = 0
        while True:
            chunk = ord(counts[position]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"character {counts[position]!r} at {position} is outside the RLE alphabet "
                                 "(ASCII 48..111)")
            position += 1
            value |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                if chunk & 0x10:
                    value -= 1 << shift
                break
            if position >= len(counts):
                raise ValueError("the string ends inside a number")
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_coco_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO run-length encoded mask to ``bool [h, w]``.

    Args:
        rle: ``{"size": [h, w], "counts": str | bytes}`` (compressed string) or ``counts`` as a
            list of run lengths (uncompressed RLE). Runs alternate background/foreground starting
            with background, over the pixels in column-major (Fortran) order.

    Raises:
        ValueError: malformed ``size`` or ``counts``, or runs that do not cover ``h * w`` pixels.
    """
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"an RLE must be {{'size': [h, w], 'counts': ...}}; got {rle!r:.80}") from error
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _rle_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs must be non-negative and cover {height}x{width} = {height * width} pixels; "
                         f"they sum to {sum(runs)}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


class MevisSource:
    """A MeViS split on disk (see the module docstring for the layout and record rules).

    Args:
        path: the folder holding ``<split>/``, or the split folder itself.
        split: ``"valid_u"`` (default), ``"train"``, ... (ignored when ``path`` is a split folder).
    """

    name = "mevis"

    def __init__(self, path: str | os.PathLike, split: str = "valid_u"):
        self.root = Path(path)
        self.split_dir = self.root if (self.root / "meta_expressions.json").is_file() else self.root / split
        meta = read_json(self.split_dir / "meta_expressions.json", LAYOUT)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise layout_error(self.split_dir / "meta_expressions.json", "has no 'videos' mapping", LAYOUT)
        self._videos: dict[str, Any] = meta["videos"]
        malformed = [video for video, entry in self._videos.items()
                     if not isinstance(entry, dict) or not isinstance(entry.get("expressions", {}), dict)]
        if malformed:
            raise layout_error(self.split_dir / "meta_expressions.json", f"videos {malformed[:3]} are not objects with an "
                               "'expressions' mapping", LAYOUT)
        if not (self.split_dir / "mask_dict.json").is_file():
            raise layout_error(self.split_dir / "mask_dict.json", "file not found (the 'valid' split ships no "
                               "masks; use 'valid_u' or 'train')", LAYOUT)
        keys = [(video, exp_id) for video, entry in self._videos.items()
                for exp_id in (entry.get("expressions") or {})]
        self._index = clip_index(keys, (safe_clip_id(f"{v}__{e}") for v, e in keys),
                                 self.split_dir / "meta_expressions.json")
        self._masks: dict[str, Any] | None = None

    def clip_ids(self) -> list[str]:
        """Every ``<video>__<exp_id>``, sorted; reads no frames and no masks."""
        return list(self._index)

    def _mask_dict(self) -> dict[str, Any]:
        if self._masks is None:
            masks = read_json(self.split_dir / "mask_dict.json", LAYOUT)
            if not isinstance(masks, dict):
                raise layout_error(self.split_dir / "mask_dict.json", "is not a mapping anno_id -> masks", LAYOUT)
            self._masks = masks
        return self._masks

    def _object_mask(self, anno_id: Any, num_frames: int, shape: tuple[int, int]) -> np.ndarray:
        """``bool [F, H, W]`` of one annotation; frames whose entry is ``null`` are empty."""
        where = self.split_dir / "mask_dict.json"
        entries = self._mask_dict().get(str(anno_id))
        if not isinstance(entries, list) or len(entries) != num_frames:
            got = ("no entry" if entries is None else f"a list of {len(entries)}" if isinstance(entries, list)
                   else f"a {type(entries).__name__}")
            raise layout_error(where, f"anno_id {anno_id!r} needs a list of {num_frames} per-frame RLEs; got {got}",
                               LAYOUT)
        mask = np.zeros((num_frames, *shape), dtype=bool)
        for t, rle in enumerate(entries):
            if rle is None:
                continue
            try:
                decoded = decode_coco_rle(rle)
            except ValueError as error:
                raise layout_error(where, f"anno_id {anno_id!r} frame {t}: {error}", LAYOUT) from error
            if decoded.shape != shape:
                raise layout_error(where, f"anno_id {anno_id!r} frame {t} is {decoded.shape[0]}x{decoded.shape[1]} but "
                                   f"the frame is {shape[0]}x{shape[1]}", LAYOUT)
            mask[t] = decoded
        return mask

    def load(self, clip_id: str) -> ClipRecord:
        """Read one (video, expression) clip; see the module docstring for how it is formed."""
        video, exp_id = indexed_clip(self._index, clip_id, self.name)
        entry = self._videos[video]
        expression = entry["expressions"][exp_id]
        where = self.split_dir / "meta_expressions.json"
        try:
            text = str(expression["exp"]).strip()
            obj_ids = [int(i) for i in expression["obj_id"]]
            anno_ids = list(expression["anno_id"])
            frame_names = [str(f) for f in entry["frames"]]
        except (KeyError, TypeError, ValueError) as error:
            raise layout_error(where, f"video {video!r} expression {exp_id!r} lacks a valid 'exp', 'obj_id', "
                               f"'anno_id' or 'frames' ({error!r})", LAYOUT) from error
        if len(obj_ids) != len(anno_ids):
            raise layout_error(where, f"video {video!r} expression {exp_id!r} has {len(obj_ids)} obj_id but "
                               f"{len(anno_ids)} anno_id; they must pair up", LAYOUT)
        frames = read_rgb_frames([self.split_dir / "JPEGImages" / video / f"{name}.jpg" for name in frame_names],
                                 LAYOUT, where)
        shape = frames.shape[1:3]
        masks = np.stack([self._object_mask(a, len(frames), shape) for a in anno_ids]) if anno_ids \
            else np.zeros((0, *frames.shape[:3]), dtype=bool)
        motions = motion_words(text)
        concepts = motions or (text,)
        return ClipRecord(
            dataset=self.name, clip_id=clip_id, frames=frames, masks=masks, mask_ids=tuple(obj_ids),
            mask_names=("",) * len(obj_ids), caption=text, concepts=concepts,
            concept_masks={c: tuple(obj_ids) for c in concepts}, motion_words=motions,
            attrs={"video": video, "expression_id": str(exp_id), "anno_ids": [str(a) for a in anno_ids],
                   "frames": frame_names, "split_dir": str(self.split_dir)})
