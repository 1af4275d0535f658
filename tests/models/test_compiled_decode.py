"""Compiled decoding: one compiled graph of the whole model's decode step, on a cache of
fixed shapes, gives the eager decode step's logits and states token by token, across
mini-batch boundaries, and is compiled once for every prefix length and position."""

import pytest
import torch

from megatron_ttt.models.compiled_decode import _COMPILED, CompiledDecoder
from megatron_ttt.models.inference_cache import InferenceCache
from tests.models.test_inference_cache import build
from tests.models.tp_cases import TINY, rel

STEPS = 2 * TINY.mini_batch_size + 3


def prefilled(model, tokens: torch.Tensor) -> InferenceCache:
    cache = InferenceCache.empty(len(model.blocks))
    model.last_logits(tokens, cache)
    return cache


def cache_tensors(cache: InferenceCache) -> list[torch.Tensor]:
    return [t for block in cache.blocks for t in (*block.mixer.ttt.weights, *(block.mixer.ttt.grads or ()))
            if t is not None] + [t for block in cache.blocks for t in (block.pre_conv, block.mixer.conv)
                                 if t is not None]


def decode_both(model, prompt: torch.Tensor, tokens: torch.Tensor, compile: bool):
    """Eager cached decoding and a CompiledDecoder from the same prompt: their logits, token by token."""
    eager = prefilled(model, prompt)
    decoder = CompiledDecoder(model, eager, compile=compile)
    pairs = [(model.last_logits(t, eager), decoder(t)) for t in tokens.split(1, dim=1)]
    return pairs, eager, decoder


@pytest.mark.parametrize("layer_type,backbone", [("linear", "mamba"), ("mlp", "transformer")])
def test_compiled_decode_equals_eager(groups, layer_type, backbone):
    model = build(groups, layer_type, backbone, torch.float32)
    prompt = 22
    ids = torch.randint(0, TINY.vocab_size, (2, prompt + STEPS), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pairs, eager, decoder = decode_both(model, ids[:, :prompt], ids[:, prompt:], compile=True)
    for step, (want, got) in enumerate(pairs):
        assert rel(got, want) < 1e-5, f"step {step}: {rel(got, want):.2e}"
    final = decoder.cache()
    assert final.position == eager.position and final.blocks[0].mixer.ttt.position == (prompt + STEPS) % TINY.mini_batch_size > 0
    for want, got in zip(cache_tensors(eager), cache_tensors(final), strict=True):
        assert rel(got, want) < 1e-5


def test_fixed_shape_step_is_bitwise_the_eager_step(groups):
    """Uncompiled, the fixed-shape state (tensor position, zero sums at a boundary) changes no bit."""
    model = build(groups, "mlp", "mamba", torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (1, 16 + STEPS), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        pairs, eager, decoder = decode_both(model, ids[:, :16], ids[:, 16:], compile=False)
    assert all(torch.equal(want, got) for want, got in pairs)
    assert all(torch.equal(a, b) for a, b in zip(cache_tensors(eager), cache_tensors(decoder.cache()), strict=True))


def test_one_graph_for_every_prefix_and_position(groups):
    """One compiled step serves every decoder of the model and batch size: other prefix
    lengths, other positions in the mini-batch, the step where the weights move."""
    model = build(groups, "linear", "mamba", torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for prefix in (3, 16, 29):
            decoder = CompiledDecoder(model, prefilled(model, ids[:1, :prefix]))
            for t in range(TINY.mini_batch_size + 1):
                decoder(ids[:1, t:t + 1])
        assert len(_COMPILED[model]) == 1
        CompiledDecoder(model, prefilled(model, ids[:, :5]))(ids[:, 5:6])
        assert len(_COMPILED[model]) == 2, "another batch size is another graph"


def test_refuses_what_it_cannot_decode(groups):
    model = build(groups, "linear", "mamba", torch.float32)
    with pytest.raises(ValueError, match="prefilled cache: run the prompt first"):
        CompiledDecoder(model, InferenceCache.empty(len(model.blocks)))
    decoder = CompiledDecoder(model, prefilled(model, torch.zeros(2, 5, dtype=torch.int64)), compile=False)
    with pytest.raises(ValueError, match=r"one int64 token per sequence, \[2, 1\]; got torch.int64 of shape \(2, 2\)"):
        decoder(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got torch.int32 of shape \(2, 1\)"):
        decoder(torch.zeros(2, 1, dtype=torch.int32))
