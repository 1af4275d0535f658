"""Causal attention (full and sliding-window, grouped-query) against its float64 twin: outputs
and every gradient, at lengths that are not multiples of the window, fresh and continuing a cache."""

import pytest
import torch

from megatron_ttt.ops.attention import causal_attention, causal_attention_reference
from tests.ops.inputs import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(T_q: int, T_k: int, heads: int = 4, kv_heads: int = 2, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, T_q, d, generator=g)
    k, v = (torch.randn(2, kv_heads, T_k, d, generator=g) for _ in range(2))
    return [x.to(DEVICE).requires_grad_() for x in (q, k, v)]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Relative RMS error <= 1e-5, or an RMS error <= 1e-5 (the inputs are of unit scale) where the
    twin's value is zero: a window of one token makes the gradients of q and k exactly zero."""
    error = (got.double() - want.double()).norm()
    return error <= 1e-5 * want.double().norm() + 1e-5 * want.numel() ** 0.5


def _output_and_grads(fn, leaves, **kw):
    out = fn(*leaves, **kw)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out, torch.autograd.grad((out * cotangent).sum(), leaves)


@pytest.mark.parametrize("window", [None, 1, 5, 16, 64])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("band_block", [7, 256])
def test_fresh_sequence_matches_the_twin(window, kv_heads, band_block):
    leaves = _qkv(37, 37, kv_heads=kv_heads)
    out, grads = _output_and_grads(causal_attention, leaves, window=window, band_block=band_block)
    want, want_grads = _output_and_grads(causal_attention_reference, leaves, window=window)
    assert close(out, want)
    for name, got, ref in zip("qkv", grads, want_grads):
        assert close(got, ref), f"d{name}: relative error {rel_err(got, ref):.2e}"


@pytest.mark.parametrize("window", [None, 3, 8])
def test_queries_that_continue_a_cache_match_the_twin(window):
    # 5 new queries at positions 11..15; keys: the last 9 cached positions and the 5 new ones.
    leaves = _qkv(5, 14)
    out, grads = _output_and_grads(causal_attention, leaves, window=window, start=11)
    want, want_grads = _output_and_grads(causal_attention_reference, leaves, window=window, start=11)
    assert close(out, want)
    for name, got, ref in zip("qkv", grads, want_grads):
        assert close(got, ref), f"d{name}: relative error {rel_err(got, ref):.2e}"


def test_a_window_of_one_is_each_tokens_own_value():
    q, k, v = _qkv(9, 9)
    out = causal_attention(q, k, v, window=1)
    torch.testing.assert_close(out, v.repeat_interleave(2, dim=1), rtol=1e-6, atol=1e-6)


def test_keys_that_miss_the_queries_own_are_refused():
    q, k, v = _qkv(5, 3)
    with pytest.raises(ValueError, match="3 keys for 5 queries"):
        causal_attention(q, k, v, window=2, start=4)
