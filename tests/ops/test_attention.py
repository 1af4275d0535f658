"""Causal attention (full and sliding-window, grouped-query) against its float64 twin: outputs
and every gradient, at lengths that are not multiples of the window, fresh and continuing a cache;
over packed documents too (segments), where a document attends as if it were alone."""

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


STARTS = ([0, 5, 6, 20], [0, 14, 30])
"""Where the documents of two 37-token rows begin: row 0 has a one-token document (5) and a start
inside a band block of 7 (20); row 1 starts one on a band block's edge (14)."""


def _segments(starts: tuple[list[int], ...] = STARTS, T: int = 37) -> torch.Tensor:
    """[B, T] int64: the document of each position, counted along each row."""
    first = torch.zeros(len(starts), T, dtype=torch.long)
    for row, positions in enumerate(starts):
        first[row, positions] = 1
    return first.cumsum(dim=1).to(DEVICE)


@pytest.mark.parametrize("window", [None, 3, 16, 64])
@pytest.mark.parametrize("band_block", [7, 256])
def test_packed_documents_match_the_twin(window, band_block):
    # Window 3 is shorter than most documents, 16 longer than some, 64 longer than the rows.
    leaves = _qkv(37, 37)
    segments = _segments()
    out, grads = _output_and_grads(causal_attention, leaves, window=window, band_block=band_block, segments=segments)
    want, want_grads = _output_and_grads(causal_attention_reference, leaves, window=window, segments=segments)
    assert close(out, want), f"relative error {rel_err(out, want):.2e}"
    for name, got, ref in zip("qkv", grads, want_grads):
        assert close(got, ref), f"d{name}: relative error {rel_err(got, ref):.2e}"


@pytest.mark.parametrize("window", [None, 3, 8])
def test_packed_queries_that_continue_a_cache_match_the_twin(window):
    # Queries at 11..15, keys at 2..15: row 0 crosses the starts at 5 and 6, row 1 the one at 14.
    leaves = _qkv(5, 14)
    segments = _segments()[:, 2:16]
    out, grads = _output_and_grads(causal_attention, leaves, window=window, start=11, segments=segments)
    want, want_grads = _output_and_grads(causal_attention_reference, leaves, window=window, start=11,
                                         segments=segments)
    assert close(out, want), f"relative error {rel_err(out, want):.2e}"
    for name, got, ref in zip("qkv", grads, want_grads):
        assert close(got, ref), f"d{name}: relative error {rel_err(got, ref):.2e}"


@pytest.mark.parametrize("window", [None, 5, 64])
def test_a_packed_document_attends_as_if_alone(window):
    # Row 0 packs [13 tokens, 24 tokens], row 1 [20 tokens, 17 tokens].
    q, k, v = _qkv(37, 37)
    packed = causal_attention(q, k, v, window=window, band_block=7, segments=_segments(([0, 13], [0, 20])))
    for row, first in enumerate([13, 20]):
        alone = causal_attention(*(x[row:row + 1, :, first:] for x in (q, k, v)), window=window, band_block=7)
        assert close(packed[row:row + 1, :, first:], alone), f"row {row}: {rel_err(packed[row, :, first:], alone):.2e}"


def test_one_document_per_row_is_the_unpacked_sequence():
    q, k, v = _qkv(37, 37)
    one = torch.ones(2, 37, dtype=torch.long, device=DEVICE)
    assert close(causal_attention(q, k, v, window=16, band_block=7, segments=one),
                 causal_attention(q, k, v, window=16, band_block=7))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", [None, 16])
def test_the_document_mask_of_cuda_matches_the_twin(window):
    # FlexAttention unfused (eager, any device) under the block mask that CUDA runs compiled.
    from torch.nn.attention.flex_attention import flex_attention

    from megatron_ttt.ops.attention import _document_block_mask

    q, k, v = (x.detach() for x in _qkv(37, 37))
    segments = _segments()
    out = flex_attention(q, k, v, block_mask=_document_block_mask(segments, window), enable_gqa=True)
    assert close(out, causal_attention_reference(q, k, v, window=window, segments=segments))


@pytest.mark.parametrize("window", [None, 64])
def test_the_document_block_mask_holds_each_rows_own_blocks(window):
    # Row 0 starts a document on a block edge (128), so its query block 1 skips key block 0; row 1's does not.
    from megatron_ttt.ops.attention import _document_block_mask, attention_mask

    T, block = 300, 128
    segments = _segments(([0, 128, 290], [0, 260]), T)
    q = torch.empty(2, 1, T, 1, device=DEVICE)
    mask = attention_mask(q, q, 0, window, segments)
    padded = torch.zeros(2, 1, 3 * block, 3 * block, dtype=torch.bool, device=DEVICE)
    padded[..., :T, :T] = mask
    want = padded.reshape(2, 1, 3, block, 3, block).any(dim=-1).any(dim=3)
    assert not want[0, 0, 1, 0] and want[1, 0, 1, 0]
    assert torch.equal(_document_block_mask(segments, window).to_dense().bool(), want)
