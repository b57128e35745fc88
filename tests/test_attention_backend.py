"""A trace keeps the attention backend the user chose (``transformer.set_attention_backend``).

On CPU the test backend is diffusers' ``_native_math`` with a call counter around it. Families
whose stock processors dispatch (HunyuanVideo, Wan, SkyReels-V2, Flux, LTX-Video) run exactly the same backend
calls traced and untraced, with bit-identical videos; the rewritten processors of families whose
stock processors call SDPA themselves (CogVideoX, Mochi, SD3, which ignore the setting) run the chosen
backend when traced.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

import vidinterp
import vidinterp.testing
from vidinterp.testing.conformance import generate, required_inputs, video_of

BACKEND = AttentionBackendName._NATIVE_MATH
STOCK_IGNORES_BACKEND = {"cogvideox", "mochi", "sd3"}


@pytest.fixture
def counted_backend(monkeypatch):
    """Count the calls of the test backend; restore diffusers' active backend afterwards."""
    calls = []
    original = _AttentionBackendRegistry._backends[BACKEND]

    @functools.wraps(original)
    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, BACKEND, counting)
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    return calls


@pytest.mark.parametrize("family", vidinterp.testing.tiny_families())
def test_traced_pipeline_keeps_the_chosen_backend(family, counted_backend):
    pipe = vidinterp.testing.tiny_pipeline(family)
    pipe.transformer.set_attention_backend(BACKEND.value)
    adapter = vidinterp.adapter_for(pipe)
    plain = video_of(generate(pipe, adapter, steps=2))
    untraced_calls = len(counted_backend)
    counted_backend.clear()
    geometry = dict(zip(("num_frames", "height", "width"), adapter.default_geometry()))
    trace = vidinterp.trace(pipe, prompt="a red dog walking on green grass", concepts=["dog"], num_inference_steps=2,
                            steps=[0, 1], pipeline_kwargs=required_inputs(pipe, adapter), **geometry)
    traced_calls = len(counted_backend)
    assert traced_calls > 0, "the traced model never ran the chosen backend"
    if family in STOCK_IGNORES_BACKEND:
        assert untraced_calls == 0
    else:
        assert traced_calls == untraced_calls
        assert np.array_equal(trace.video, plain)
    processors = [adapter.attention_module(spec).processor for spec in adapter.site_specs()]  # restored
    assert all(getattr(processor, "_attention_backend", BACKEND) == BACKEND for processor in processors)


def test_a_processor_that_does_not_dispatch_is_a_clear_error():
    """A custom processor is traced wherever it reaches diffusers' dispatch; one computing
    attention another way fails its first call with an error naming the site and the remedy,
    and the model is restored."""
    pipe = vidinterp.testing.tiny_pipeline("flux")
    attention = pipe.transformer.single_transformer_blocks[0].attn

    class OwnAttention:
        """Plain SDPA over the joint sequence, no dispatch."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            heads = lambda tensor: tensor.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # noqa: E731
            query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
            return torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)

    own = OwnAttention()
    attention.set_processor(own)
    with pytest.raises(RuntimeError, match=r"site blocks\.2\.attn \(OwnAttention\) made 0 call\(s\) to diffusers' "
                                           r"dispatch_attention_fn where 1 \(main\) were expected"):
        vidinterp.trace(pipe, prompt="a dog", concepts=["dog"], num_inference_steps=2)
    assert attention.processor is own
