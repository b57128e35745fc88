"""Memory guards (`vidinterp.memory`): estimates from the config, refusal before any model work,
VAE tiling for one run only, and an untouched default run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vidinterp
import vidinterp.testing
from vidinterp import memory
from vidinterp.memory import InsufficientMemoryError, VAETilingWarning, estimate_memory
from vidinterp.registry import adapter_for
from vidinterp.trace import _default_guidance, default_analyses

# Tiles of 16x16 pixels (4x4 latents) overlapping by half, so that diffusers' tiled decode of the
# tiny 32x48 clip puts the tiles back at its size.
TINY_TILE = {"tile_sample_min_height": 16, "tile_sample_min_width": 16, "tile_latent_min_height": 4,
             "tile_latent_min_width": 4, "tile_overlap_factor_height": 0.5, "tile_overlap_factor_width": 0.5}


@pytest.fixture(autouse=True)
def _no_environment_limit(monkeypatch):
    monkeypatch.delenv(memory.ENVIRONMENT_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def pipe():
    return vidinterp.testing.tiny_pipeline("cogvideox")


@pytest.fixture
def fresh_pipe():
    return vidinterp.testing.tiny_pipeline("cogvideox")


def _estimate(pipe, geometry=(9, 32, 48), mode="generation", cfg_batched=True, slots=1):
    adapter = adapter_for(pipe)
    analyses = len(default_analyses(adapter, adapter.layout_for(*geometry).frames))
    return estimate_memory(adapter, geometry, mode=mode, cfg_batched=cfg_batched, concept_slots=slots,
                           analyses=analyses)


def _vae_tiling_state(vae) -> dict:
    return {name: value for name, value in vars(vae).items() if name.startswith(("tile_", "use_"))}


def _model_state(pipe) -> tuple:
    transformer = pipe.transformer
    return ({name: tensor.clone() for name, tensor in transformer.state_dict().items()},
            dict(transformer.attn_processors), _vae_tiling_state(pipe.vae),
            [len(module._forward_hooks) + len(module._forward_pre_hooks) for module in transformer.modules()])


def _assert_unchanged(pipe, before: tuple) -> None:
    weights, processors, tiling, hooks = _model_state(pipe)
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[name], before[0][name]) for name in weights)
    assert processors.keys() == before[1].keys()
    assert all(processors[name] is before[1][name] for name in processors)
    assert tiling == before[2] and hooks == before[3]


def _count_calls(monkeypatch, *modules) -> list:
    calls = []
    for module in modules:
        original = module.forward
        monkeypatch.setattr(module, "forward", lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    return calls


# ------------------------------------------------------------------------------------ estimate
def test_estimate_grows_with_frames_size_and_batch(pipe):
    base = _estimate(pipe, (9, 32, 48))
    more_frames, larger = _estimate(pipe, (17, 32, 48)), _estimate(pipe, (9, 64, 96))
    assert more_frames.transformer > base.transformer and more_frames.vae > base.vae
    # 4x the pixels and tokens: the VAE term (all pixel terms) grows 4x, the transformer a bit less
    # (the prompt tokens stay), the text encoder not at all
    assert larger.vae == 4 * base.vae
    assert 3 * base.transformer < larger.transformer < 4 * base.transformer
    assert larger.text == base.text
    single = _estimate(pipe, (9, 32, 48), cfg_batched=False)
    assert single.transformer < base.transformer and single.vae == base.vae
    # renoising encodes 8(+1) frames per pass, generation decodes 2(+1) latent frames = 12 frames
    assert _estimate(pipe, (17, 32, 48), mode="renoise").vae < more_frames.vae


def test_estimate_matches_brute_force_formula_on_tiny_config(pipe):
    """Tiny CogVideoX 5b: 2 heads x 16, 4 latent channels, patch 2, 16 prompt tokens, T5 of width
    32 (d_ff 64, 4 heads), a float32 VAE of 8 channels that decodes 2(+1) latent frames and
    encodes 8(+1) pixel frames per pass, 4x spatial compression."""
    frames, height, width, slots, analyses = 17, 64, 96, 2, 3
    adapter = adapter_for(pipe)
    estimate = estimate_memory(adapter, (frames, height, width), mode="generation", cfg_batched=True,
                               concept_slots=slots, analyses=analyses)
    visual = 5 * (64 // 8) * (96 // 8)  # 5 latent frames of 8x12 tokens
    prompt, d, batch = 16, 32, 2
    latent = visual * 2 * 2 * 1 * 4
    assert estimate.transformer == ((24 * visual + 24 * prompt) * batch * d * 4 + 8 * (visual + slots) * d * 4
                                    + 4 * analyses * slots * visual * 4 + 8 * batch * latent * 4)
    assert estimate.text == (8 * prompt * 64 + 6 * 4 * prompt * prompt) * 4
    assert estimate.vae == 40 * (4 * 3) * height * width * 8 * 4 + 8 * frames * height * width * 3 * 4
    assert estimate.vae_tiled == estimate.vae  # the default 240x360 tiles exceed the clip
    encode = estimate_memory(adapter, (frames, height, width), mode="renoise", cfg_batched=True,
                             concept_slots=slots, analyses=analyses)
    assert encode.vae == 40 * (8 + 1) * height * width * 8 * 4 + 8 * frames * height * width * 3 * 4
    assert estimate.peak() == max(estimate.text, estimate.transformer, estimate.vae)


def test_estimate_allocates_nothing_and_reads_tile_sizes(fresh_pipe):
    for name, value in TINY_TILE.items():
        setattr(fresh_pipe.vae, name, value)
    estimate = _estimate(fresh_pipe)
    assert estimate.vae_tiled == 40 * 9 * 16 * 16 * 8 * 4 + 8 * 9 * 32 * 48 * 3 * 4 < estimate.vae


@pytest.mark.parametrize(("family", "mode"), [("cogvideox", "generation"), ("cogvideox", "renoise"),
                                              ("wan", "renoise"), ("hunyuan_video", "generation")])
def test_estimate_is_conservative_within_3x_of_measured_peak(family, mode):
    """The whole trace's CPU allocations (torch profiler) against the estimate, native geometry."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    pipe = vidinterp.testing.tiny_pipeline(family)
    adapter = adapter_for(pipe)
    geometry = adapter.default_geometry()
    video = np.random.default_rng(0).integers(0, 256, (*geometry, 3), dtype=np.uint8) if mode == "renoise" else None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        vidinterp.trace(pipe, video=video, prompt="a dog", concepts=["dog"], num_inference_steps=2)
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation:
            events.append((node.start_time_ns, node.typed[1].alloc_size))
    live = measured = 0
    for _, size in sorted(events):
        live += size
        measured = max(measured, live)
    guidance = _default_guidance(pipe) if mode == "generation" else 1.0
    estimate = _estimate(pipe, geometry, mode, adapter.cfg_batched(guidance))
    assert 1.0 <= estimate.peak() / measured <= 3.0, (estimate, measured)


# ------------------------------------------------------------------------------ limits and sizes
@pytest.mark.parametrize(("text", "size"), [("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("24G", 24 * 2**30),
                                            ("1.5 MiB", 3 * 2**19), ("123456", 123456), ("2kb", 2000),
                                            (" off ", "off")])
def test_sizes_parse(text, size):
    assert memory.parse_bytes(text) == size


@pytest.mark.parametrize(("value", "error"), [(1.5, TypeError), (True, TypeError), ([1], TypeError),
                                              (0, ValueError), (-1, ValueError), ("lots", ValueError),
                                              ("12 parsecs", ValueError), ("0GB", ValueError)])
def test_bad_memory_limit_fails_before_the_model_is_touched(pipe, monkeypatch, value, error):
    before = _model_state(pipe)
    calls = _count_calls(monkeypatch, pipe.text_encoder, pipe.transformer, pipe.vae)
    with pytest.raises(error, match="memory_limit"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit=value)
    assert calls == []
    _assert_unchanged(pipe, before)


def test_memory_limit_takes_numpy_integers():
    assert memory.memory_limit_setting(np.int64(10**12)) == 10**12


def test_cpu_available_memory_is_known_here():
    available = memory.available_memory("cpu")
    assert available is None or available > 0


# ------------------------------------------------------------------------------------- refusal
def test_tiny_limit_refuses_before_any_model_work_naming_estimate_limit_and_settings(pipe, monkeypatch):
    fewer = _estimate(pipe, (5, 32, 48)).peak()
    limit = (fewer + _estimate(pipe).peak()) // 2
    before = _model_state(pipe)
    calls = _count_calls(monkeypatch, pipe.text_encoder, pipe.transformer, pipe.vae)
    with pytest.raises(InsufficientMemoryError) as raised:
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit=limit)
    message = str(raised.value)
    assert isinstance(raised.value, MemoryError)
    assert memory.format_bytes(_estimate(pipe).peak()) in message and "9 frame(s) at 32x48" in message
    assert f"memory_limit={limit}" in message and memory.format_bytes(limit) in message
    assert "num_frames=5" in message and "height=" in message and "width=" in message
    assert "num_frames=5" in raised.value.suggestions and raised.value.limit == limit
    assert calls == []  # no text encoded, no transformer or VAE call
    _assert_unchanged(pipe, before)


def test_environment_variable_sets_the_limit_and_the_keyword_wins(pipe, monkeypatch):
    monkeypatch.setenv(memory.ENVIRONMENT_VARIABLE, "1KB")
    with pytest.raises(InsufficientMemoryError, match=f"{memory.ENVIRONMENT_VARIABLE}='1KB'"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2)
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit="off")
    assert trace.video.shape == (9, 32, 48, 3)
    monkeypatch.setenv(memory.ENVIRONMENT_VARIABLE, "off")
    vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2)


def test_unknown_available_memory_skips_the_guard(pipe, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: None)
    trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2)
    assert trace.video.shape == (9, 32, 48, 3)


def test_no_fitting_geometry_says_so(pipe):
    with pytest.raises(InsufficientMemoryError, match="no smaller geometry fits") as raised:
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit=1000)
    assert raised.value.suggestions == []


# -------------------------------------------------------------------------------------- tiling
def _tiling_only_limit(pipe) -> int:
    estimate = _estimate(pipe)
    assert estimate.peak(tiled=True) < estimate.peak()
    return (estimate.peak(tiled=True) + estimate.peak()) // 2


def _decode_spy(monkeypatch, vae) -> list:
    seen, original = [], vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **k: seen.append(vae.use_tiling) or original(*a, **k))
    return seen


def test_limit_that_fits_only_tiled_tiles_the_vae_for_the_run_warns_and_restores(fresh_pipe, monkeypatch):
    pipe = fresh_pipe
    for name, value in TINY_TILE.items():
        setattr(pipe.vae, name, value)
    before = _vae_tiling_state(pipe.vae)
    seen = _decode_spy(monkeypatch, pipe.vae)
    tiled_decodes = []
    original_tiled = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda *a, **k: tiled_decodes.append(1) or original_tiled(*a, **k))
    with pytest.warns(VAETilingWarning, match="enabled VAE tiling") as record:
        trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2,
                                memory_limit=_tiling_only_limit(pipe))
    assert len([w for w in record if issubclass(w.category, VAETilingWarning)]) == 1
    assert len(str(record[0].message).splitlines()) == 1
    assert seen == [True] and tiled_decodes  # tiled while the pipeline decoded
    assert trace.video.shape == (9, 32, 48, 3)
    assert _vae_tiling_state(pipe.vae) == before and pipe.vae.use_tiling is False


def test_tiling_is_restored_when_the_run_fails(fresh_pipe):
    pipe = fresh_pipe
    for name, value in TINY_TILE.items():
        setattr(pipe.vae, name, value)
    before = _vae_tiling_state(pipe.vae)

    def fail(step):
        assert pipe.vae.use_tiling
        raise KeyboardInterrupt

    with pytest.warns(VAETilingWarning), pytest.raises(KeyboardInterrupt):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, on_step=fail,
                        memory_limit=_tiling_only_limit(pipe))
    assert _vae_tiling_state(pipe.vae) == before


def test_family_that_forbids_tiling_is_refused_instead(fresh_pipe, monkeypatch):
    pipe = fresh_pipe
    for name, value in TINY_TILE.items():
        setattr(pipe.vae, name, value)
    limit = _tiling_only_limit(pipe)
    monkeypatch.setattr(type(adapter_for(pipe)), "vae_tiling", False)
    with pytest.raises(InsufficientMemoryError):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit=limit)
    assert pipe.vae.use_tiling is False


def test_vae_tiled_by_the_user_counts_as_tiled_and_stays_tiled(fresh_pipe):
    pipe = fresh_pipe
    for name, value in TINY_TILE.items():
        setattr(pipe.vae, name, value)
    limit = _tiling_only_limit(pipe)
    pipe.vae.enable_tiling()
    before = _vae_tiling_state(pipe.vae)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VAETilingWarning)
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2, memory_limit=limit)
    assert _vae_tiling_state(pipe.vae) == before and pipe.vae.use_tiling is True


# --------------------------------------------------------------------------------- default run
def test_default_run_is_guarded_and_untouched(pipe, monkeypatch):
    asked = []
    available = memory.available_memory
    monkeypatch.setattr(memory, "available_memory", lambda device: asked.append(device) or available(device))
    seen = _decode_spy(monkeypatch, pipe.vae)
    reference = pipe(prompt="a dog", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                     output_type="np", num_frames=9, height=32, width=48, max_sequence_length=16).frames[0]
    seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", VAETilingWarning)
        trace = vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=3, seed=0)
    assert asked == [torch.device("cpu")] and seen == [False]
    assert np.array_equal(trace.video, np.round(np.clip(reference, 0, 1) * 255).astype(np.uint8))
