"""Packed documents as every layer reads them: where each begins, how far into it each token is,
and which one each token belongs to. A document begins after its predecessor's EOS, which stays
the last token of the earlier document.

A model whose `document_boundaries` is "reset" computes one `Packing` per forward from the token
ids (the whole sequence under context parallelism) and hands it to every layer: the TTT layers
restart their state and mini-batches (ops/documents.py) and count RoPE positions within the
document, the convolutions see zeros before a document's first token, attention attends within
the document. Under "carry" there is none, and every layer runs as one sequence.
"""

from typing import NamedTuple

import torch


class DocumentCursor(NamedTuple):
    """Where a cached sequence stands after the tokens seen so far (inference)."""

    tokens: torch.Tensor
    """[B] int64: tokens of the current document seen so far."""
    document: torch.Tensor
    """[B] int64: the current document's number (attention's segment id)."""
    after_eod: torch.Tensor
    """[B] bool: the last token was EOS, so the next one begins a document."""


class Packing(NamedTuple):
    """The documents of a batch of token rows [B, T]."""

    starts: torch.Tensor
    """[B,T] bool: a document begins at this token."""
    since_start: torch.Tensor
    """[B,T] int64: tokens since the first token of this token's document (0 there)."""
    segments: torch.Tensor
    """[B,T] int64: the document each token belongs to, counted along the row."""

    def cursor(self, tokens: torch.Tensor, eod_id: int) -> DocumentCursor:
        """Where the rows stand after these tokens."""
        return DocumentCursor(self.since_start[:, -1] + 1, self.segments[:, -1], tokens[:, -1] == eod_id)

    def columns(self, first: int, stop: int) -> "Packing":
        """Tokens first..stop-1 of every row (a context-parallel rank's share)."""
        return Packing(*(x[:, first:stop] for x in self))


def packing(tokens: torch.Tensor, eod_id: int, cursor: DocumentCursor | None = None) -> Packing:
    """The documents of `tokens` [B,T]: a fresh row begins one at its first token; a cached one
    continues its current document unless its last token was EOS."""
    B, T = tokens.shape
    after_eod = tokens[:, :-1] == eod_id
    first = torch.ones(B, 1, dtype=torch.bool, device=tokens.device) if cursor is None else cursor.after_eod[:, None]
    starts = torch.cat((first, after_eod), dim=1)
    t = torch.arange(T, device=tokens.device).expand(B, T)
    began = torch.where(starts, t, -1).cummax(dim=1).values
    carried = 0 if cursor is None else cursor.tokens[:, None]
    since_start = torch.where(began >= 0, t - began, carried + t)
    segments = starts.long().cumsum(dim=1) + (0 if cursor is None else cursor.document[:, None])
    return Packing(starts, since_start, segments)
