"""Causal self-attention, full or over a sliding window, for the attention layers of hybrid models.

Queries q [B, H, Tq, d] sit at positions start .. start + Tq - 1; keys and values [B, Hkv, Tk, d]
are the Tk positions that end with the last query (a cache's keys, then the queries' own), and H
is a multiple of Hkv (grouped-query attention: query head h reads key head h // (H / Hkv)).
Query i attends to key j when j <= i and, with a window W, i - j < W. Scores are scaled by
1/sqrt(d). With `segments` (int64 [B, Tk], a document id per key position, so the queries' are its
last Tq) query i attends to key j only if, besides, both lie in the same document: packed documents
never see each other. A query always sees itself, so no row is wholly masked.

`causal_attention` picks the fused kernel: torch's flash / memory-efficient SDPA for full causal
attention (never a T x T matrix), FlexAttention with a sliding-window block mask for windows on
CUDA (blocks wholly outside the window are skipped: O(T W) time and memory), query blocks each
against their band of keys for windows elsewhere (O(T W) as well), and SDPA with an explicit mask
for queries that continue a cache (a decode step: one query, at most W keys in a window layer).
With segments, a fresh sequence runs FlexAttention on CUDA under a block mask built per batch
(document & causal & window), SDPA with a [B, 1, T, T] mask for full attention elsewhere, and
the banded window with each block's mask also asking for the same document.
`causal_attention_reference` is the obviously correct twin: a float64 masked softmax.
"""

import functools
import math

import torch
import torch.nn.functional as F


def allowed(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """[Tq, Tk] bool: may the query at each position attend to the key at each position."""
    distance = q_positions[:, None] - k_positions[None, :]
    mask = distance >= 0
    return mask if window is None else mask & (distance < window)


def positions(q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The absolute positions of the queries and of the keys (which end with the last query)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tk < Tq:
        raise ValueError(f"{Tk} keys for {Tq} queries: the keys must include the queries' own")
    end = start + Tq
    return (torch.arange(start, end, device=q.device), torch.arange(end - Tk, end, device=q.device))


def same_document(segments: torch.Tensor, Tq: int) -> torch.Tensor:
    """[B, 1, Tq, Tk] bool: does each query (the last Tq of the key positions) share each key's
    document; `segments` [B, Tk] holds a document id per key position."""
    return (segments[:, segments.shape[1] - Tq:, None] == segments[:, None, :])[:, None]


def attention_mask(q: torch.Tensor, k: torch.Tensor, start: int, window: int | None,
                   segments: torch.Tensor | None) -> torch.Tensor:
    """Which keys each query may attend to: [Tq, Tk] bool, or [B, 1, Tq, Tk] with segments."""
    mask = allowed(*positions(q, k, start), window)
    return mask if segments is None else mask & same_document(segments, q.shape[-2])


@functools.cache
def _compiled_flex_attention():
    """FlexAttention is fused only when compiled: one compile per process, reused by every layer."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=8)
def _window_block_mask(length: int, window: int, device: str):
    """Which (128 x 128) blocks of a length x length score matrix a sliding window touches."""
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_window(b, h, i, j):
        return (j <= i) & (i - j < window)

    return create_block_mask(sliding_window, None, None, length, length, device=device)


def _document_block_mask(segments: torch.Tensor, window: int | None):
    """Which (128 x 128) blocks of each row's score matrix hold a pair of the same document that
    the causal rule (and the window) allows; `segments` [B, T] is a document id per position."""
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, i, j):
        keep = (j <= i) & (segments[b, i] == segments[b, j])
        return keep if window is None else keep & (i - j < window)

    B, T = segments.shape
    return create_block_mask(document_causal, B, None, T, T, device=segments.device)


@functools.cache
def _compiled_document_block_mask():
    """Built eagerly, the block mask first materializes every row's T x T mask (gigabytes at long
    T); compiled, it is reduced block by block. One compile per shape and window; the segments are
    an input, so a new batch reuses it."""
    return torch.compile(_document_block_mask, dynamic=False)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    return _compiled_flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def _flex_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    return _flex(q, k, v, _window_block_mask(q.shape[-2], window, str(q.device)))


BAND_BLOCK = 256
"""Queries per block of the banded sliding window (off CUDA)."""


def _banded_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, block: int,
                   segments: torch.Tensor | None = None) -> torch.Tensor:
    """A fresh sequence's sliding window, query block by query block: block i0..i1 attends to the
    keys i0 - window + 1 .. i1 - 1, so no score outside the band (plus a block's corner) exists.
    With segments [B, T], each block's mask also asks for the same document."""
    T, gqa, out = q.shape[-2], q.shape[1] != k.shape[1], []
    for i0 in range(0, T, block):
        i1, j0 = min(T, i0 + block), max(0, i0 - window + 1)
        mask = allowed(torch.arange(i0, i1, device=q.device), torch.arange(j0, i1, device=q.device), window)
        if segments is not None:
            mask = mask & same_document(segments[:, j0:i1], i1 - i0)
        out.append(F.scaled_dot_product_attention(q[..., i0:i1, :], k[..., j0:i1, :], v[..., j0:i1, :],
                                                  attn_mask=mask, enable_gqa=gqa))
    return torch.cat(out, dim=-2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
                     start: int = 0, band_block: int = BAND_BLOCK, *,
                     segments: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output [B, H, Tq, d] (see the module docstring).

    q [B, H, Tq, d], k and v [B, Hkv, Tk, d]; window: the sliding window W (None: full causal);
    start: the first query's position; band_block: queries per block of the banded window (off
    CUDA); segments: int64 [B, Tk], the document of each key position (None: one sequence)."""
    fresh = q.shape[-2] == k.shape[-2] and start == 0
    whole = window is None or window >= q.shape[-2]
    if fresh and q.is_cuda and segments is not None:
        return _flex(q, k, v, _compiled_document_block_mask()(segments, window))
    if fresh and whole and segments is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    if fresh and not whole:
        return _flex_window(q, k, v, window) if q.is_cuda else _banded_window(q, k, v, window, band_block, segments)
    mask = attention_mask(q, k, start, window, segments)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
                               start: int = 0, *, segments: torch.Tensor | None = None) -> torch.Tensor:
    """The twin: every score, masked, softmaxed, in float64; returned in q's dtype. The arguments
    are causal_attention's."""
    group = q.shape[1] // k.shape[1]
    q64, k64, v64 = (x.double() for x in (q, k, v))
    k64, v64 = (x.repeat_interleave(group, dim=1) for x in (k64, v64))
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~attention_mask(q, k, start, window, segments), float("-inf"))
    return (scores.softmax(-1) @ v64).to(q.dtype)
