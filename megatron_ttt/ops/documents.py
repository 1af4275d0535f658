"""Packed documents in the inner loop: every document starts from the learned initial state.

A call's tokens may hold several documents (`DocumentStarts`: where each begins). A document's
mini-batches count from its own first token, so its tokens share weights with the tokens of
the same document only, and its token coefficients (and the RoPE positions t mod b the mixer
applies) restart with it: each document computes exactly what it would alone.

The dual form and the kernels realise this by laying the tokens out again (`DocumentLayout`):
a document that starts inside the call begins on a fresh mini-batch, after pad tokens (zero
inputs, lr = 0) that fill its predecessor's last one, and the state restarts from the initial
weights at that mini-batch. Pads add exact zeros to every sum, so the restart is exact at any
token; the cost is at most b - 1 pad tokens per document (about (b - 1) / 2 on average), and
nothing when documents are long. A row whose last document ends before the longest row's does
not move its state at the trailing pads (`complete`), so its state after the call is exact too,
`position` tokens into a mini-batch of its own.
"""

from typing import NamedTuple

import torch


class DocumentStarts(NamedTuple):
    """Where a call's documents begin, and what the state restarts from there."""

    starts: torch.Tensor
    """[B,T] bool: a document begins at this token (the one after an EOS); the state restarts
    before it. False at token 0 continues the state the call was given."""
    initial: tuple[torch.Tensor, ...]
    """The learnable initial weights [H,...] (W, b, or W1, b1, W2, b2) a document starts from."""

    def check(self, batch: int, tokens: int, state_weights: tuple[torch.Tensor, ...]) -> None:
        """Raise ValueError naming what does not fit a call of `batch` x `tokens` and its state."""
        if self.starts.shape != (batch, tokens) or self.starts.dtype != torch.bool:
            raise ValueError(f"documents.starts must be a bool [B,T] = {(batch, tokens)} tensor, got "
                             f"{self.starts.dtype} {tuple(self.starts.shape)}")
        want = [tuple(w.shape[1:]) for w in state_weights]
        if [tuple(w.shape) for w in self.initial] != want:
            raise ValueError(f"documents.initial must be the per-head weights {want}, got "
                             f"{[tuple(w.shape) for w in self.initial]}")


class DocumentLayout(NamedTuple):
    """Where each token of a call goes on a grid of mini-batches, one per row."""

    index: torch.Tensor
    """[B,T] int64: each token's position on the grid."""
    resets: torch.Tensor
    """[B,n] bool: the state restarts at the start of this mini-batch."""
    complete: torch.Tensor
    """[B,n] bool: the state moves at the end of this mini-batch (False from the row's last,
    unfinished one on)."""
    ends: torch.Tensor
    """[B] int64: the grid position after each row's last token."""
    mini_batch_size: int

    @property
    def length(self) -> int:
        """Grid positions per row: whole mini-batches."""
        return self.resets.shape[1] * self.mini_batch_size

    @property
    def position(self) -> torch.Tensor:
        """[B] int64: tokens of each row's unfinished mini-batch after the call."""
        return self.ends % self.mini_batch_size

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """[B,H,T,...] -> [B,H,length,...]: the tokens on the grid, zeros elsewhere."""
        T = x.shape[2]
        # Each grid position's token, or T: the zero appended after the last.
        source = self.index.new_full((self.index.shape[0], self.length), T)
        source.scatter_(1, self.index, torch.arange(T, device=x.device).expand_as(self.index))
        padded = torch.cat((x, x.new_zeros(*x.shape[:2], 1, *x.shape[3:])), dim=2)
        return _rows_select(padded, source)

    def take(self, y: torch.Tensor) -> torch.Tensor:
        """[B,H,length,...] -> [B,H,T,...]: the grid's values at the tokens."""
        return _rows_select(y, self.index)


def _rows_select(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B,H,L,...] -> [B,H,len,...] taking positions index[b] [len] of row b: one index_select a
    row, which copies whole vectors (a gather would read an index per element)."""
    return torch.stack([row.index_select(1, where) for row, where in zip(x, index)])


def document_layout(starts: torch.Tensor, lead: int | torch.Tensor, mini_batch_size: int) -> DocumentLayout:
    """The grid of a call whose rows begin `lead` ([B], or one int for all) tokens into a mini-batch.

    A document starting at token s after one that began at s' (or -lead: the document the state
    is in) needs (-(s - s')) mod b pads before it; every later token moves by the pads before it.
    """
    B, T = starts.shape
    b, device = mini_batch_size, starts.device
    lead = torch.as_tensor(lead, dtype=torch.int64, device=device).expand(B)
    t = torch.arange(T, device=device).expand(B, T)
    began = torch.where(starts, t, -1).cummax(dim=1).values
    before = torch.cat((torch.full((B, 1), -1, device=device, dtype=torch.int64), began[:, :-1]), dim=1)
    previous = torch.where(before < 0, -lead[:, None], before)
    pads = torch.where(starts, torch.remainder(previous - t, b), 0)
    index = t + lead[:, None] + pads.cumsum(dim=1)
    ends = index[:, -1] + 1
    n_blocks = -(-int(ends.max()) // b)
    resets = torch.zeros(B, n_blocks, dtype=torch.bool, device=device)
    rows, tokens = starts.nonzero(as_tuple=True)
    resets[rows, index[rows, tokens] // b] = True
    complete = (torch.arange(1, n_blocks + 1, device=device) * b)[None, :] <= ends[:, None]
    return DocumentLayout(index, resets, complete, ends, b)
