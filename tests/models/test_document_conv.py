"""The causal depthwise convolutions over packed documents: every document sees zeros before its
first token. Against a per-token loop (outputs and every gradient), a packed document against
the same document alone, and the streaming form in two pieces against one call."""

import pytest
import torch

from megatron_ttt.models.layers import causal_depthwise_conv, streaming_causal_conv

T, B, C, K = 13, 2, 3, 4


def _since_start(starts: tuple[list[int], ...], carried: tuple[int, ...] = (0, 0), length: int = T) -> torch.Tensor:
    """[B, length] int64: tokens since each token's document began; a row's first document may have
    begun `carried` tokens before the first one here."""
    rows = []
    for first_tokens, before in zip(starts, carried):
        count, row = before - 1, []
        for t in range(length):
            count = 0 if t in first_tokens else count + 1
            row.append(count)
        rows.append(row)
    return torch.tensor(rows)


SINCE_START = _since_start(([0, 1, 5, 7], [9]), carried=(0, 5))
"""Row 0: documents of 1, 4 (= K), 2 and 6 tokens, the first two starts adjacent; row 1: a
document begun 5 tokens before these (so it reads what came before), then one of 4 tokens."""


def _inputs(seed: int = 0) -> list[torch.Tensor]:
    """x, weight, bias, past in float64, each requiring its gradient."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(T, B, C), (C, 1, K), (C,), (K - 1, B, C)]
    return [torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for shape in shapes]


def twin(x, weight, bias, since_start, past=None):
    """y[t, b] = bias + sum over lags j <= since_start[b, t] of w[K-1-j] x[t-j], x before the
    first token being `past` (None: zeros)."""
    past = x.new_zeros(K - 1, B, C) if past is None else past
    inputs = torch.cat((past, x))
    rows = []
    for t in range(x.shape[0]):
        row = []
        for b in range(B):
            y = bias
            for j in range(K):
                if since_start[b, t] >= j:
                    y = y + weight[:, 0, K - 1 - j] * inputs[t + K - 1 - j, b]
            row.append(y)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _check(got, want, leaves):
    cotangent = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    got_grads = torch.autograd.grad((got * cotangent).sum(), leaves, allow_unused=True)
    want_grads = torch.autograd.grad((want * cotangent).sum(), leaves, allow_unused=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for leaf, g, w in zip(leaves, got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"grad of {tuple(leaf.shape)}: {m}")


def test_the_convolution_matches_the_loop():
    x, weight, bias, _ = _inputs()
    _check(causal_depthwise_conv(x, weight, bias, SINCE_START), twin(x, weight, bias, SINCE_START), [x, weight, bias])


@pytest.mark.parametrize("with_past", [True, False])
def test_the_streaming_convolution_matches_the_loop(with_past):
    x, weight, bias, past = _inputs()
    past = past if with_past else None
    y, history = streaming_causal_conv(x, weight, bias, past, SINCE_START)
    leaves = [x, weight, bias] + ([past] if with_past else [])
    _check(y, twin(x, weight, bias, SINCE_START, past), leaves)
    torch.testing.assert_close(history, x[T - (K - 1):], rtol=0, atol=0)


def test_a_packed_document_convolves_as_if_alone():
    x, weight, bias, _ = _inputs()
    first = 6
    packed = causal_depthwise_conv(x, weight, bias, _since_start(([0, first], [0, first])))
    alone = causal_depthwise_conv(x[first:], weight, bias)
    torch.testing.assert_close(packed[first:], alone, rtol=1e-12, atol=1e-12)


def test_one_document_per_row_is_the_unpacked_convolution():
    x, weight, bias, _ = _inputs()
    one = _since_start(([0], [0]))
    torch.testing.assert_close(causal_depthwise_conv(x, weight, bias, one), causal_depthwise_conv(x, weight, bias),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [5, 7, 9])
def test_streaming_in_two_pieces_is_one_call(split):
    # Split 5 starts a document at the piece's first token, 7 and 9 cut one inside (row 0, row 1).
    x, weight, bias, past = _inputs()
    whole, history = streaming_causal_conv(x, weight, bias, past, SINCE_START)
    head, middle = streaming_causal_conv(x[:split], weight, bias, past, SINCE_START[:, :split])
    tail, end = streaming_causal_conv(x[split:], weight, bias, middle, SINCE_START[:, split:])
    torch.testing.assert_close(torch.cat((head, tail)), whole, rtol=0, atol=0)
    torch.testing.assert_close(end, history, rtol=0, atol=0)
