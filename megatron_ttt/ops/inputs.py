"""What the inner loop takes besides its state: `TTTInputs`, the tensors every entry point is
given, and `MiniBatches`, what the dual form derives from them per mini-batch."""

from typing import NamedTuple

import torch

from megatron_ttt.ops.state import TTTState


class TTTInputs(NamedTuple):
    """One TTT layer's inputs over a sequence, or a piece of one (one token for a decode step)."""

    q: torch.Tensor
    """[B,H,T,d] queries, RoPE applied."""
    k: torch.Tensor
    """[B,H,T,d] keys, RoPE applied."""
    v: torch.Tensor
    """[B,H,T,d] values."""
    lr: torch.Tensor
    """[B,H,T] per-token inner learning rate, ttt_base_lr * sigmoid(x w_lr + b_lr) / d."""
    token_offset: torch.Tensor
    """[b] learnable offsets of the token coefficients c[i] = max(0, 1/(i+1) + offset[i])."""
    ln_weight: torch.Tensor
    """[H,d] the inner LayerNorm's weight."""
    ln_bias: torch.Tensor
    """[H,d] the inner LayerNorm's bias."""

    def check(self, state: TTTState, mini_batch_size: int) -> None:
        """Raise ValueError naming the first input, or part of the state, whose shape does not fit the others."""
        if self.q.dim() != 4:
            raise ValueError(f"q must be [B,H,T,d], got shape {tuple(self.q.shape)}")
        B, H, T, d = self.q.shape
        for name, x in (("k", self.k), ("v", self.v)):
            if x.shape != self.q.shape:
                raise ValueError(f"{name} has shape {tuple(x.shape)}, q has {tuple(self.q.shape)}; they must match")
        if self.lr.shape != (B, H, T):
            raise ValueError(f"lr must be [B,H,T] = {(B, H, T)}, got {tuple(self.lr.shape)}")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        if self.token_offset.shape != (mini_batch_size,):
            raise ValueError(f"token_offset must be [mini_batch_size] = [{mini_batch_size}], "
                             f"got {tuple(self.token_offset.shape)}")
        for name, x in (("ln_weight", self.ln_weight), ("ln_bias", self.ln_bias)):
            if x.shape != (H, d):
                raise ValueError(f"{name} must be [H,d] = {(H, d)}, got {tuple(x.shape)}")
        state.check(B, H, d, mini_batch_size)


class MiniBatches(NamedTuple):
    """The dual form's inputs of a run of n consecutive mini-batches, [N, n, ...] each (N = B x H
    rows of inner models): everything about them that does not depend on the state."""

    q: torch.Tensor
    """[N,n,b,d] queries."""
    k: torch.Tensor
    """[N,n,b,d] keys."""
    target: torch.Tensor
    """[N,n,b,d] v - k: what LN(g(k)) is trained to match."""
    lr: torch.Tensor
    """[N,n,b] per-token inner learning rate (0 on pad tokens)."""
    eta: torch.Tensor
    """[N,n,b,b] c_i lr_j for j <= i, else 0."""
    attn0: torch.Tensor
    """[N,n,b,b] eta * (q_i . k_j + 1): the first layer's dual-form mixing matrix."""
    coeff: torch.Tensor
    """[1,n,b] the token coefficients c."""
    ln_w: torch.Tensor
    """[N,n,1,d] the inner LayerNorm's weight of each row."""
    ln_b: torch.Tensor
    """[N,n,1,d] the inner LayerNorm's bias of each row."""

    def split(self, size: int) -> list["MiniBatches"]:
        """Runs of `size` mini-batches (the last may be shorter). Split, not indexing: its backward
        is one cat, where indexing would zero-fill a full-size gradient for every run."""
        return [MiniBatches(*run) for run in zip(*(x.split(size, dim=1) for x in self))]

    def unbind(self) -> list["MiniBatches"]:
        """Each mini-batch of the run, [N, ...] each: every one its own view, so no gradient is
        summed across mini-batches except by the backward's one final stack."""
        return [MiniBatches(*one) for one in zip(*(x.unbind(1) for x in self))]
