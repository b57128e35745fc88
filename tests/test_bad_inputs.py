"""Every bad input to ``vidinterp.trace`` and ``vidinterp.hooked``, one row each: the error type,
a message naming the argument, the value and what is expected, and afterwards the model and the
files exactly as they were.

A row is ``case(id, overrides, error, pattern, family=..., call=..., runs=...)``: ``overrides``
replace keys of the base call (``BASE``, plus ``video=CLIP`` for renoising rows), ``pattern``
must match the message (``re.search``). Rows that fail before any work assert that neither the
transformer, the VAE nor the text encoder ran; rows with ``runs=True`` (a hook that returns a
wrong tensor at run time) assert that the model did run, and then that it was restored. Every
row compares, before and after the call: a hash of every component's state dict, the identity
of each attention processor, each processor's attention backend and diffusers' active one, the
torch hooks on every module, the module tree, diffusers' hook registries and routed dispatch,
and the bytes and modification times of the files in a shared folder (a video file, a saved
pipeline, a pre-existing ``trace.nc``).

Video contents are checked by :mod:`vidinterp.video` (``prepare_video``, before the model is
touched); their rows are here too.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

import vidinterp
import vidinterp.testing
from vidinterp import processors as site_processors
from vidinterp.analyses.cross_attention import CrossAttention
from vidinterp.analyses.imap import IMAP
from vidinterp.video import VideoReadError

FAMILIES = ("cogvideox", "sd3", "wan")
BASE = {"prompt": "a dog walking on grass", "concepts": ["dog"], "num_inference_steps": 2}


class _Sentinel:
    """A placeholder in a row, resolved per family when the row runs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLIP = _Sentinel("CLIP")                  # a valid uint8 clip at the family's native geometry
CLIP_FILE = _Sentinel("CLIP_FILE")        # an existing mp4 (12 frames at 40x56) in the shared folder
MISSING_FILE = _Sentinel("MISSING_FILE")  # a path in the shared folder that does not exist
PIPE_DIR = _Sentinel("PIPE_DIR")          # the family's pipeline saved in the shared folder
TRANSFORMER = _Sentinel("TRANSFORMER")    # the family's transformer, not its pipeline
ZERO_BYTE_FILE = _Sentinel("ZERO_BYTE_FILE")  # empty.mp4, 0 bytes
TEXT_FILE = _Sentinel("TEXT_FILE")        # notes.mp4, text
TRUNCATED_FILE = _Sentinel("TRUNCATED_FILE")  # cut.mp4, the first 200 bytes of clip.mp4
IMAGELESS_FOLDER = _Sentinel("IMAGELESS_FOLDER")  # a folder holding only a text file


# ------------------------------------------------------------------------------------ hooks
def keep(module, args, output):
    return None


def one_argument(output):
    return output


def narrowed(module, args, output):
    return output[:, :1]


def narrowed_with_context(module, args, output, context):
    return output[:, :, :1] if context.analysed_rows is not None else None


def as_double(module, args, output):
    return output.double()


def as_number(module, args, output):
    return 0


def explode(module, args, output):
    raise RuntimeError("boom from a user hook")


# ------------------------------------------------------------------------------------ the table
def case(id: str, overrides: dict, error, pattern: str, *, family: str = "cogvideox", call: str = "trace",
         runs: bool = False, marks=()):
    return pytest.param(family, call, overrides, error, pattern, runs, id=id, marks=marks)


FLOAT_CLIP = np.zeros((9, 32, 48, 3), np.float32)
NAN_CLIP = FLOAT_CLIP.copy()
NAN_CLIP[0, 0, 0, 0] = np.nan
INF_CLIP = FLOAT_CLIP.copy()
INF_CLIP[0, 0, 0, 0] = np.inf
VIDEO_ERRORS = (ValueError, TypeError)

CASES = [
    # concepts
    case("concepts-none", {"concepts": None}, TypeError, r"concepts must be a list of words, e\.g\. .*got None"),
    case("concepts-empty", {"concepts": []}, ValueError, r"concepts must name at least one concept"),
    case("concepts-int", {"concepts": 5}, TypeError, r"concepts must be a list of words.*got 5 \(int\)"),
    case("concepts-bytes", {"concepts": b"dog"}, TypeError, r"concepts must be a list of words.*got b'dog' \(bytes\)"),
    case("concepts-dict", {"concepts": {"dog": 1}}, TypeError, r"concepts must be a list of words.*\(dict\)"),
    case("concepts-not-strings", {"concepts": ["dog", 3]}, TypeError, r"concepts must be strings, got 3 \(int\) in \['dog', 3\]"),
    case("concepts-none-item", {"concepts": ["dog", None]}, TypeError, r"concepts must be strings, got None \(NoneType\)"),
    case("concepts-empty-string", {"concepts": ["dog", ""]}, ValueError, r"concepts must be non-empty strings, got '' in"),
    case("concepts-whitespace", {"concepts": ["dog", "  "]}, ValueError, r"concepts must be non-empty strings, got '  '"),
    case("concepts-duplicate", {"concepts": ["dog", "dog"]}, ValueError, r"concepts must be distinct; \['dog'\] appear more than once"),
    case("concepts-duplicate-after-strip", {"concepts": ["dog", " dog "]}, ValueError,
         r"concepts must be distinct; \['dog'\] appear more than once in \['dog', ' dog '\] \(after stripping"),
    case("concepts-not-prompt-words-wan", {"concepts": ["dog", "cat"]}, ValueError, r"'cat' is not a word of the prompt",
         family="wan"),
    # integers
    case("num_inference_steps-float", {"num_inference_steps": 2.5}, TypeError,
         r"num_inference_steps must be an integer >= 1, got 2\.5 \(float\)$"),
    case("num_inference_steps-integral-float", {"num_inference_steps": 2.0}, TypeError,
         r"num_inference_steps must be an integer >= 1, got 2\.0 \(float\); floats are refused, even integral ones: pass 2"),
    case("num_inference_steps-string", {"num_inference_steps": "4"}, TypeError,
         r"num_inference_steps must be an integer >= 1, got '4' \(str\)"),
    case("num_inference_steps-bool", {"num_inference_steps": True}, TypeError,
         r"num_inference_steps must be an integer >= 1, got True \(bool\)"),
    case("num_inference_steps-none", {"num_inference_steps": None}, TypeError,
         r"num_inference_steps must be an integer >= 1, got None"),
    case("num_inference_steps-zero", {"num_inference_steps": 0}, ValueError, r"num_inference_steps must be an integer >= 1, got 0$"),
    case("num_inference_steps-negative", {"num_inference_steps": -3}, ValueError,
         r"num_inference_steps must be an integer >= 1, got -3$"),
    case("num_inference_steps-numpy-float", {"num_inference_steps": np.float32(3)}, TypeError,
         r"num_inference_steps must be an integer >= 1, got .*3\.0.*\(float32\)"),
    case("renoise_step-float", {"video": CLIP, "renoise_step": 0.7}, TypeError,
         r"renoise_step must be None or an integer >= 0, got 0\.7 \(float\)"),
    case("renoise_step-negative", {"video": CLIP, "renoise_step": -1}, ValueError,
         r"renoise_step must be None or an integer >= 0, got -1"),
    case("renoise_step-past-schedule", {"video": CLIP, "renoise_step": 2}, ValueError,
         r"renoise_step=2 with num_renoise_steps=1 falls outside the schedule: expected .*num_inference_steps=2"),
    case("renoise-window-past-end", {"video": CLIP, "renoise_step": 1, "num_renoise_steps": 2}, ValueError,
         r"renoise_step=1 with num_renoise_steps=2 falls outside the schedule"),
    case("num_renoise_steps-float", {"video": CLIP, "num_renoise_steps": 1.5}, TypeError,
         r"num_renoise_steps must be an integer >= 1, got 1\.5 \(float\)"),
    case("num_renoise_steps-zero", {"video": CLIP, "num_renoise_steps": 0}, ValueError,
         r"num_renoise_steps must be an integer >= 1, got 0"),
    case("renoise_step-in-generation", {"renoise_step": 1}, ValueError,
         r"renoise_step=1 applies to renoising a video \(video=\.\.\.\); generation runs the whole schedule"),
    case("num_renoise_steps-in-generation", {"num_renoise_steps": 2}, ValueError,
         r"num_renoise_steps=2 applies to renoising a video"),
    case("seed-float", {"seed": 0.5}, TypeError, r"seed must be an integer in 0\.\.18446744073709551615, got 0\.5 \(float\)"),
    case("seed-negative", {"seed": -1}, ValueError, r"seed must be an integer in 0\.\.18446744073709551615, got -1"),
    case("seed-too-large", {"seed": 2**64}, ValueError, r"seed must be an integer in 0\.\.18446744073709551615, got 18446744073709551616"),
    case("seed-string", {"seed": "0"}, TypeError, r"seed must be an integer in .*got '0' \(str\)"),
    case("num_frames-integral-float", {"num_frames": 9.0}, TypeError,
         r"num_frames must be None or an integer >= 1, got 9\.0 \(float\); floats are refused, even integral ones: pass 9"),
    case("num_frames-zero", {"num_frames": 0}, ValueError, r"num_frames must be None or an integer >= 1, got 0"),
    case("height-string", {"height": "32"}, TypeError, r"height must be None or an integer >= 1, got '32' \(str\)"),
    case("width-negative", {"width": -48}, ValueError, r"width must be None or an integer >= 1, got -48"),
    case("num_frames-invalid-for-family", {"num_frames": 8}, ValueError, r"num_frames must be 4\*n \+ 1 .*got 8"),
    case("height-invalid-for-family", {"height": 30}, ValueError, r"height must be a positive multiple of 8 pixels, got 30"),
    # steps
    case("steps-int", {"steps": 3}, TypeError, r"steps must be None or a list of schedule indices .*got 3 \(int\)"),
    case("steps-string", {"steps": "01"}, TypeError, r"steps must be None or a list of schedule indices .*got '01' \(str\)"),
    case("steps-empty", {"steps": []}, ValueError, r"steps must hold at least one schedule index, got an empty list"),
    case("steps-float-item", {"steps": [1, 1.5]}, TypeError, r"steps\[1\] must be an integer >= 0, got 1\.5 \(float\) in steps=\[1, 1\.5\]"),
    case("steps-string-item", {"steps": ["1"]}, TypeError, r"steps\[0\] must be an integer >= 0, got '1' \(str\)"),
    case("steps-negative-item", {"steps": [-1]}, ValueError, r"steps\[0\] must be an integer >= 0, got -1"),
    case("steps-outside-schedule", {"steps": [0, 5]}, ValueError, r"steps \[5\] are outside the steps this trace runs: expected indices in 0\.\.1"),
    case("steps-outside-renoise-window", {"video": CLIP, "renoise_step": 1, "steps": [0]}, ValueError,
         r"steps \[0\] are outside the steps this trace runs: expected indices in 1\.\.1 \(renoise"),
    # numbers and strings
    case("guidance_scale-nan", {"guidance_scale": float("nan")}, ValueError, r"guidance_scale must be a finite number >= 0, got nan"),
    case("guidance_scale-inf", {"guidance_scale": float("inf")}, ValueError, r"guidance_scale must be a finite number >= 0, got inf"),
    case("guidance_scale-negative", {"guidance_scale": -1.0}, ValueError, r"guidance_scale must be a finite number >= 0, got -1\.0"),
    case("guidance_scale-string", {"guidance_scale": "6"}, TypeError, r"guidance_scale must be a finite number >= 0, got '6' \(str\)"),
    case("guidance_scale-bool", {"guidance_scale": True}, TypeError, r"guidance_scale must be a finite number >= 0, got True \(bool\)"),
    case("prompt-list", {"prompt": ["a dog"]}, TypeError,
         r"prompt must be a string or None, got \['a dog'\] \(list\); one prompt per trace"),
    case("prompt-int", {"prompt": 5}, TypeError, r"prompt must be a string or None, got 5 \(int\)"),
    case("prompt-missing-in-generation", {"prompt": None}, ValueError, r"generation needs a prompt .*got prompt=None"),
    case("prompt-blank-in-generation", {"prompt": "   "}, ValueError, r"generation needs a prompt .*got prompt='   '"),
    case("negative_prompt-list", {"negative_prompt": ["blurry"]}, TypeError,
         r"negative_prompt must be a string or None, got \['blurry'\] \(list\)"),
    case("branch-invalid", {"branch": "negative"}, ValueError,
         r"branch must be one of \('conditional', 'unconditional'\), got 'negative'"),
    case("branch-none", {"branch": None}, ValueError, r"branch must be one of \('conditional', 'unconditional'\), got None"),
    case("concept_reduction-invalid", {"concept_reduction": "max"}, ValueError,
         r"concept_reduction='max' is invalid: concept reduction must be one of \('first', 'mean'\)"),
    case("concept_reduction-list", {"concept_reduction": ["first"]}, ValueError, r"concept_reduction=\['first'\] is invalid"),
    case("resample-string", {"video": CLIP, "resample": "yes"}, TypeError, r"resample must be True .*got str 'yes'"),
    case("resample-int", {"video": CLIP, "resample": 1}, TypeError, r"resample must be True .*got int 1"),
    case("on_step-not-callable", {"on_step": 3}, TypeError, r"on_step must be None or a callable taking the step index, got 3 \(int\)"),
    # concept slots
    case("concept_slots-too-few", {"concepts": ["dog", "grass"], "concept_slots": 1}, ValueError,
         r"concept_slots must be None, 'text_length' or an integer >= the number of concepts \(2\), got 1"),
    case("concept_slots-float", {"concept_slots": 2.0}, TypeError, r"concept_slots must be None, 'text_length' or an integer >= the number of concepts \(1\), got 2\.0 \(float\)"),
    case("concept_slots-unknown-string", {"concept_slots": "text"}, ValueError, r"concept_slots must be None, 'text_length' .*got 'text'"),
    case("concept_slots-text_length-without-stream", {"concept_slots": "text_length"}, ValueError,
         r"wan has no concept stream \(concepts are prompt words\): its concept slots cannot be padded", family="wan"),
    case("concept_slots-padding-without-stream", {"concept_slots": 3}, ValueError,
         r"wan has no concept stream .*leave concept_slots unset \(got 3\)", family="wan"),
    # pipeline_kwargs
    case("pipeline_kwargs-list", {"pipeline_kwargs": [("latents", None)]}, TypeError,
         r"pipeline_kwargs must be None or a dict of extra pipe\(\.\.\.\) arguments, .*\(list\)"),
    case("pipeline_kwargs-non-string-key", {"pipeline_kwargs": {1: 2}}, TypeError, r"pipeline_kwargs keys must be strings, got 1 \(int\)"),
    case("pipeline_kwargs-sets-steps", {"pipeline_kwargs": {"num_inference_steps": 3}}, ValueError,
         r"pipeline_kwargs must not set \['num_inference_steps'\]: vidinterp\.trace sets them itself"),
    case("pipeline_kwargs-sets-geometry", {"pipeline_kwargs": {"height": 32, "generator": None}}, ValueError,
         r"pipeline_kwargs must not set \['generator', 'height'\]"),
    case("pipeline_kwargs-unknown", {"pipeline_kwargs": {"num_frame": 9}}, ValueError,
         r"pipeline_kwargs \['num_frame'\] are not arguments of CogVideoXPipeline\.__call__ \(did you mean 'num_frame' -> 'num_frames'\?\)"),
    case("pipeline_kwargs-in-renoise", {"video": CLIP, "pipeline_kwargs": {"latents": None}}, ValueError,
         r"pipeline_kwargs \['latents'\] apply to generation \(video=None\) only"),
    # analyses
    case("analyses-unknown-name", {"analyses": ["imapp"]}, ValueError,
         r"analyses\[0\]: unknown analysis name 'imapp'; did you mean 'imap'\? registered analyses are \[.*'cross_attention'.*'imap'"),
    case("analyses-not-analysis", {"analyses": ["imap", 3]}, TypeError,
         r"analyses\[1\] must be an Analysis instance or a registered analysis name \[.*\], got 3 \(int\)"),
    case("analyses-class", {"analyses": [IMAP]}, TypeError,
         r"analyses\[0\] is the class IMAP, not an instance: instantiate it \(IMAP\(\), with any settings\) or pass its registered name 'imap'"),
    case("analyses-empty", {"analyses": []}, ValueError, r"analyses must hold at least one analysis; got an empty list"),
    case("analyses-not-iterable", {"analyses": 3}, TypeError, r"analyses must be None or a list of Analysis instances .*got 3 \(int\)"),
    case("analyses-duplicate-names", {"analyses": ["imap", IMAP(k=1)]}, ValueError,
         r"analyses must have distinct names .*\['imap'\] appear more than once.*analysis\.name = 'imap_k3'"),
    case("analyses-two-frames-on-image-model", {"analyses": ["imap", "separation", CrossAttention()]}, ValueError,
         r"analyses \['imap', 'separation'\] need at least 2 latent frames \(to compare frames\); this video has 1 latent frame \(sd3\)",
         family="sd3"),
    case("analyses-two-frames-on-one-frame-video", {"video": np.zeros((1, 32, 48, 3), np.uint8), "resample": False,
                                                "analyses": ["imap"]},
         ValueError, r"analysis 'imap' needs at least 2 latent frames \(to compare frames\); this video has 1 latent frame \(cogvideox\)"),
    case("analyses-absent-site-kind", {"analyses": ["concept_attention"]}, ValueError,
         r"analysis 'concept_attention' reads sites of kind \['joint'\], but wan has sites of kind \['cross', 'self'\]", family="wan"),
    # hooks, checked before the run
    case("hooks-list", {"hooks": [keep]}, TypeError, r"hooks must be None or a dict \{hook-point name: function\}.*\(list\)"),
    case("hooks-non-string-key", {"hooks": {0: keep}}, TypeError, r"hooks keys must be strings, got 0 \(int\)"),
    case("hooks-unknown-name", {"hooks": {"blocks.0.attn.hook_zz": keep}}, ValueError,
         r"hooks: unknown hook point 'blocks\.0\.attn\.hook_zz' on cogvideox; did you mean \['blocks\.0\.attn\.hook_z'.*"
         r"e\.g\. 'blocks\.0\.attn\.hook_q'.*vidinterp\.list_sites"),
    case("hooks-unknown-layer", {"hooks": {"blocks.9.attn.hook_q": keep}}, ValueError,
         r"unknown hook point 'blocks\.9\.attn\.hook_q' on cogvideox; .*\(16 in all"),
    case("hooks-concept-hook-without-stream", {"hooks": {"blocks.0.cross_attn.hook_concept_q": keep}}, ValueError,
         r"unknown hook point 'blocks\.0\.cross_attn\.hook_concept_q' on wan; did you mean", family="wan"),
    case("hooks-not-callable", {"hooks": {"blocks.0.attn.hook_z": 3}}, TypeError,
         r"hooks\['blocks\.0\.attn\.hook_z'\] must be a callable torch forward hook .*got 3 \(int\)"),
    case("hooks-wrong-signature", {"hooks": {"blocks.0.attn.hook_z": one_argument}}, TypeError,
         r"hooks\['blocks\.0\.attn\.hook_z'\] must take \(module, args, output\) .*its signature is \(output\)"),
    # hooks that return a wrong value at run time: the model runs, then is restored
    case("hook-returns-wrong-shape", {"hooks": {"blocks.0.attn.hook_z": narrowed}}, ValueError,
         r"hook 'blocks\.0\.attn\.hook_z' returned a tensor of shape \[2, 1, 88, 16\], dtype torch\.float32 on cpu; a hook "
         r"must return None \(keep the tensor\) or a tensor of the hook point's shape \[2, 2, 88, 16\] "
         r"\[batch, heads, tokens, head_dim\], dtype torch\.float32 and device cpu", runs=True),
    case("hook-with-context-returns-wrong-shape", {"hooks": {"blocks.1.attn.hook_q": narrowed_with_context}}, ValueError,
         r"hook 'blocks\.1\.attn\.hook_q' returned a tensor of shape \[2, 2, 1, 16\].*shape \[2, 2, 88, 16\]", runs=True),
    case("hook-returns-wrong-dtype", {"hooks": {"blocks.0.attn.hook_v": as_double}}, ValueError,
         r"hook 'blocks\.0\.attn\.hook_v' returned a tensor of shape \[2, 2, 88, 16\], dtype torch\.float64.*dtype torch\.float32",
         runs=True),
    case("hook-returns-non-tensor", {"hooks": {"blocks.0.attn.hook_k": as_number}}, TypeError,
         r"hook 'blocks\.0\.attn\.hook_k' returned int; a hook must return None \(keep the tensor\) or a tensor", runs=True),
    case("hook-raises", {"hooks": {"blocks.0.attn.hook_q": explode}}, RuntimeError, r"boom from a user hook", runs=True),
    case("hook-returns-wrong-shape-wan", {"hooks": {"blocks.0.cross_attn.hook_z": narrowed}}, ValueError,
         r"hook 'blocks\.0\.cross_attn\.hook_z' returned a tensor of shape \[\d+, 1, ", family="wan", runs=True),
    # model
    case("model-int", {"model": 5}, TypeError,
         r"model must be a diffusers pipeline \(or a local path / cached model id\) of one of the families \[.*'cogvideox'.*\]; "
         r"got int 5, which has no `transformer` component"),
    case("model-none", {"model": None}, TypeError, r"model must be a diffusers pipeline .*got NoneType None"),
    case("model-transformer", {"model": TRANSFORMER}, TypeError,
         r"model is a CogVideoXTransformer3DModel, a transformer, not a pipeline: pass the diffusers pipeline that holds it"),
    case("model-unsupported-family", {"model": SimpleNamespace(transformer=torch.nn.Linear(2, 2))}, TypeError,
         r"unsupported model class Linear; supported families and their transformer classes: \{.*'cogvideox'"),
    case("model-missing-path", {"model": MISSING_FILE}, OSError, r"could not load pipeline .*missing.*vidinterp never downloads"),
    case("model-empty-string", {"model": ""}, ValueError, r"model must be a diffusers pipeline or a local path / cached model id, got ''"),
    case("model-path-then-unknown-hook", {"model": PIPE_DIR, "hooks": {"blocks.0.attn.hook_x": keep}}, ValueError,
         r"unknown hook point 'blocks\.0\.attn\.hook_x' on cogvideox"),
    # files: a bad argument next to an existing video file leaves it (and every other file) as it was
    case("video-file-with-bad-steps", {"video": CLIP_FILE, "num_inference_steps": 0}, ValueError,
         r"num_inference_steps must be an integer >= 1, got 0"),
    case("video-file-wrong-geometry", {"video": CLIP_FILE, "resample": False}, ValueError, r"12 frames at 40x56"),
    # video contents (vidinterp/video.py)
    case("video-nan", {"video": NAN_CLIP}, VIDEO_ERRORS, r"video .*NaN"),
    case("video-inf", {"video": INF_CLIP}, VIDEO_ERRORS, r"video .*(NaN or infinite|infinite)"),
    case("video-empty", {"video": np.zeros((0, 32, 48, 3), np.uint8)}, VIDEO_ERRORS, r"video .*shape \[0, 32, 48, 3\]"),
    case("video-int", {"video": 5}, VIDEO_ERRORS, r"video must be a path .*got int"),
    case("video-object", {"video": object()}, VIDEO_ERRORS, r"video must be a path .*got object"),
    case("video-list-of-paths", {"video": ["clip.mp4"]}, VIDEO_ERRORS, r"video must be .*dtype <U8"),
    case("video-wrong-rank", {"video": np.zeros((9, 32, 48), np.uint8)}, VIDEO_ERRORS,
         r"video must be .*\[frames, height, width, .*got shape \[9, 32, 48\]"),
    case("video-wrong-dtype", {"video": np.zeros((9, 32, 48, 3), np.int64)}, VIDEO_ERRORS,
         r"video must be .*uint8.*dtype int64"),
    case("video-float-out-of-range", {"video": FLOAT_CLIP + 2}, VIDEO_ERRORS, r"video .*\[0, 1\].*\[2, 2\]"),
    case("video-missing-file", {"video": MISSING_FILE}, FileNotFoundError, r"video file not found: .*missing"),
    case("video-zero-byte-file", {"video": ZERO_BYTE_FILE}, VideoReadError, r"empty\.mp4.*the file is empty \(0 bytes\)"),
    case("video-text-file", {"video": TEXT_FILE}, VideoReadError, r"notes\.mp4.*PyAV \(ffmpeg\)"),
    case("video-truncated-file", {"video": TRUNCATED_FILE}, VideoReadError, r"cut\.mp4.*PyAV \(ffmpeg\)"),
    case("video-folder-without-images", {"video": IMAGELESS_FOLDER}, VideoReadError, r"notes.*holds no images.*readme\.txt"),
    # vidinterp.hooked
    case("hooked-concepts-not-strings", {"concepts": ["dog", 1]}, TypeError, r"concepts must be strings, got 1 \(int\)", call="hooked"),
    case("hooked-concepts-duplicate-after-strip", {"concepts": ["dog", "dog "]}, ValueError,
         r"concepts must be distinct; \['dog'\]", call="hooked"),
    case("hooked-concepts-empty", {"concepts": []}, ValueError, r"concepts must name at least one concept", call="hooked"),
    case("hooked-prompt-list", {"concepts": ["dog"], "prompt": ["a dog"]}, TypeError,
         r"prompt must be a string or None, got \['a dog'\] \(list\)", call="hooked"),
    case("hooked-concept_reduction", {"concept_reduction": "last"}, ValueError,
         r"concept_reduction='last' is invalid: concept reduction must be one of", call="hooked"),
    case("hooked-model-int", {"model": 5}, TypeError, r"model must be a diffusers pipeline .*got int 5", call="hooked"),
    case("hooked-model-transformer", {"model": TRANSFORMER}, TypeError, r"WanTransformer3DModel, a transformer, not a pipeline",
         call="hooked", family="wan"),
    case("hooked-concept-not-in-prompt-wan", {"concepts": ["cat"], "prompt": "a dog walking on grass"}, ValueError,
         r"'cat' is not a word of the prompt", call="hooked", family="wan"),
]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pipes() -> dict:
    """One tiny pipeline per family, shared by every row; their processors carry an explicit
    attention backend (``native``, the default, so numerics are unchanged) that must survive."""
    active = _AttentionBackendRegistry._active_backend
    built = {}
    for family in FAMILIES:
        built[family] = vidinterp.testing.tiny_pipeline(family)
        built[family].transformer.set_attention_backend("native")
    _AttentionBackendRegistry._active_backend = active
    return built


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pipes) -> Path:
    """Files that must survive every row: an mp4, a saved pipeline, a pre-existing trace.nc."""
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("bad_inputs")
    frames = np.random.default_rng(1).integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)
    iio.imwrite(root / "clip.mp4", frames, fps=8, plugin="pyav", codec="libx264")
    pipes["cogvideox"].save_pretrained(root / "cogvideox")
    (root / "trace.nc").write_bytes(b"an earlier trace: these bytes must stay\n" * 64)
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    (root / "cut.mp4").write_bytes((root / "clip.mp4").read_bytes()[:200])
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no frames here")
    return root


def resolve(value, family: str, pipes: dict, folder: Path):
    """A row's value with its sentinels replaced."""
    if value is CLIP:
        frames, height, width = vidinterp.adapter_for(pipes[family]).default_geometry()
        return np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    if value is CLIP_FILE:
        return folder / "clip.mp4"
    if value is MISSING_FILE:
        return str(folder / "missing")
    named = {ZERO_BYTE_FILE: "empty.mp4", TEXT_FILE: "notes.mp4", TRUNCATED_FILE: "cut.mp4", IMAGELESS_FOLDER: "notes"}
    if isinstance(value, _Sentinel) and value in named:
        return folder / named[value]
    if value is PIPE_DIR:
        return str(folder / family)
    if value is TRANSFORMER:
        return pipes[family].transformer
    return value


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def snapshot(pipe, folder: Path) -> dict:
    """Everything a failed call must leave as it was."""
    digest = hashlib.sha256()
    hooks, tree, registries = [], [], []
    for component, module in sorted(_modules(pipe).items()):
        for key, tensor in module.state_dict().items():
            digest.update(f"{component}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        for name, sub in module.named_modules():
            tree.append(f"{component}.{name}:{type(sub).__name__}")
            hooks.append((f"{component}.{name}", len(sub._forward_hooks), len(sub._forward_pre_hooks),
                          len(sub._backward_hooks), len(sub._backward_pre_hooks)))
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                registries.append((f"{component}.{name}", sorted(registry.hooks)))
    processors = dict(pipe.transformer.attn_processors)
    files = {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
             for path in sorted(folder.rglob("*")) if path.is_file()}
    return {
        "weights": digest.hexdigest(),
        "processors": processors,
        "backends": {name: getattr(processor, "_attention_backend", None) for name, processor in processors.items()},
        "active_backend": _AttentionBackendRegistry._active_backend,
        "hooks": hooks,
        "tree": tree,
        "registries": registries,
        "routed_dispatch": dict(site_processors._INTERCEPTED),
        "transformer_forward": "forward" in pipe.transformer.__dict__,
        "files": files,
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["weights"] == before["weights"], "weights changed"
    assert after["processors"].keys() == before["processors"].keys()
    changed = [name for name, processor in after["processors"].items() if processor is not before["processors"][name]]
    assert not changed, f"attention processors replaced: {changed}"
    for key in ("backends", "active_backend", "hooks", "tree", "registries", "routed_dispatch", "transformer_forward", "files"):
        assert after[key] == before[key], f"{key} changed"


class WorkCounter:
    """Counts forward calls of each component and its direct children (the VAE encodes through
    its encoder, the pipeline calls the text encoder and the transformer directly)."""

    def __init__(self, pipe) -> None:
        self.calls = {name: 0 for name in ("transformer", "vae", "text_encoder")}
        self.handles = []
        for name, module in _modules(pipe).items():
            key = next((known for known in self.calls if name.startswith(known)), None)
            if key is None:
                continue
            for target in (module, *module.children()):
                self.handles.append(target.register_forward_pre_hook(self._counter(key)))

    def _counter(self, key: str):
        def count(module, args):
            self.calls[key] += 1
        return count

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def call(kind: str, pipe, overrides: dict) -> None:
    if kind == "trace":
        arguments = {**BASE, **overrides}
        model = arguments.pop("model", pipe)
        vidinterp.trace(model, **arguments)
    else:
        arguments = dict(overrides)
        model = arguments.pop("model", pipe)
        with vidinterp.hooked(model, **arguments):
            raise AssertionError("hooked() accepted the arguments")


@pytest.mark.parametrize("family, kind, overrides, error, pattern, runs", CASES)
def test_bad_input_is_refused_and_leaves_everything_intact(pipes, folder, family, kind, overrides, error, pattern, runs):
    pipe = pipes[family]
    overrides = {key: resolve(value, family, pipes, folder) for key, value in overrides.items()}
    work = WorkCounter(pipe)
    try:
        before = snapshot(pipe, folder)
        with pytest.raises(error) as raised:
            call(kind, pipe, overrides)
        after = snapshot(pipe, folder)
    finally:
        work.remove()
    message = str(raised.value) if not isinstance(raised.value, KeyError) else raised.value.args[0]
    assert re.search(pattern, message), f"message {message!r} does not match {pattern!r}"
    assert_unchanged(before, after)
    if runs:
        assert work.calls["transformer"] > 0, "the row was meant to fail while the model runs"
    else:
        assert work.calls == {"transformer": 0, "vae": 0, "text_encoder": 0}, f"work started: {work.calls}"


def test_the_table_is_large_and_ids_are_unique():
    ids = [param.id for param in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


def test_accepted_forms_run(pipes):
    """What the checks accept: analysis names mixed with instances (a single name too), NumPy
    integers, a single concept string, and concepts stripped of surrounding whitespace."""
    pipe = pipes["cogvideox"]
    trace = vidinterp.trace(pipe, prompt="a dog walking on grass", concepts=" dog ", num_inference_steps=np.int64(2),
                            analyses=["gramcol", CrossAttention()], steps=np.array([1]), seed=np.uint8(3))
    assert {"gramcol", "cross_attention"} <= set(trace.maps.data_vars)
    assert list(trace.maps.concept.values) == ["dog"] and trace.attrs["seed"] == 3
    single = vidinterp.trace(pipe, prompt="a dog walking on grass", concepts=["dog"], num_inference_steps=2, analyses="gramcol")
    assert list(single.maps.data_vars) == ["gramcol"]


def test_model_generates_as_before_after_a_hook_fails_mid_run(pipes):
    """A hook that returns a wrong tensor stops the run; the same call without it then gives the
    video an untouched pipeline gives."""
    pipe = pipes["cogvideox"]
    reference = vidinterp.trace(pipe, **BASE, analyses=["cross_attention"]).video
    with pytest.raises(ValueError, match="hook 'blocks.1.attn.hook_z' returned a tensor of shape"):
        vidinterp.trace(pipe, **BASE, analyses=["cross_attention"], hooks={"blocks.1.attn.hook_z": narrowed})
    assert np.array_equal(vidinterp.trace(pipe, **BASE, analyses=["cross_attention"]).video, reference)


@pytest.mark.parametrize("argv, pattern", [
    pytest.param(["--steps", "0"], r"num_inference_steps must be an integer >= 1, got 0", id="cli-steps-zero"),
    pytest.param(["--renoise-step", "60"], r"renoise_step=60 with num_renoise_steps=1 falls outside the schedule",
                 id="cli-renoise-step-past-schedule"),
])
def test_cli_bad_input_is_one_error_line_and_leaves_the_output_folder(tmp_path, capsys, argv, pattern):
    """The command line reports the same check as one ``vidinterp: error:`` line (exit status 2)
    and leaves an earlier run's files in ``--out`` as they were."""
    from vidinterp.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "trace.nc").write_bytes(b"an earlier trace: these bytes must stay\n" * 64)
    (out / "trace.html").write_text("<html>an earlier view</html>")
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.iterdir()}
    assert main(["run", "--model", "tiny-cogvideox", "--out", str(out), *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vidinterp: error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.iterdir()} == before
