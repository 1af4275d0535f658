"""Fused TTT-MLP: the whole inner loop of one (batch, head) in one Triton program."""

import torch

from megatron_ttt.kernels.fused import FusedTTTFunction
from megatron_ttt.kernels.host import check_kernel_inputs, check_restarts
from megatron_ttt.kernels.ttt_mlp.kernels import ttt_mlp_bwd_kernel, ttt_mlp_fwd_kernel


MAX_CHUNK_ELEMENTS = 4096
"""A [D, HC] slice of W1 at most this many fp32 values (16 KiB): the largest operand of any
product in the kernels (kernels/README.md, "Memory")."""


def hidden_chunk(d: int, hidden: int) -> int:
    """HC, the hidden units the kernels take at a time: a power of two dividing `hidden`, at
    least 16 (tl.dot's minimum), with a [d, HC] tile of at most MAX_CHUNK_ELEMENTS values."""
    return min(hidden, max(16, MAX_CHUNK_ELEMENTS // d))


class TTTMLPFunction(FusedTTTFunction):
    forward_kernel = ttt_mlp_fwd_kernel
    backward_kernel = ttt_mlp_bwd_kernel

    @staticmethod
    def sizes(q, state):
        d, hidden = q.shape[-1], state[0].shape[-1]
        return {"D": d, "HID": hidden, "HC": hidden_chunk(d, hidden)}

    @staticmethod
    def workspace(programs, meta, device):
        """dZ1 of the mini-batch being differentiated, between the backward's two passes."""
        return [torch.empty(programs, meta["BL"], meta["HID"], device=device)]


def fused_ttt_mlp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    coeff: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    mini_batch_size: int,
    time_checkpoint_group: int = 0,
    resets: torch.Tensor | None = None,
    initial: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """TTT-MLP over a sequence that starts at a mini-batch boundary, forward and backward in Triton.

    Args:
        q, k, v: [B,H,T,d] (fp32, fp16 or bf16; d a power of two >= 16).
        lr: [B,H,T] per-token inner learning rate.
        coeff: [b] token coefficients c[i] (megatron_ttt.ops.inner.token_coefficients).
        ln_weight, ln_bias: [H,d] the inner LayerNorm.
        w1, b1, w2, b2: [B,H,d,h], [B,H,h], [B,H,h,d], [B,H,d] the state before the first token
            (h a power of two, 4 d in the reference; kept in fp32 on chip).
        mini_batch_size: b.
        time_checkpoint_group: G, mini-batches between the states the forward keeps for the
            backward (which replays each group); 0 keeps every mini-batch's state.
        resets: None, or bool [B, ceil(T / b)]: at the start of mini-batch n of batch row i (every
            head) where resets[i, n], the state restarts from `initial` (packed documents, each
            laid to start on a mini-batch). resets[:, 0] may be set: w1, b1, w2, b2 then go unused
            for that row (zero gradient).
        initial: with resets, the learnable initial weights per head (W1 [H,d,h], b1 [H,h],
            W2 [H,h,d], b2 [H,d]); their gradient sums those of the state at every restart.

    Returns:
        (z [B,H,T,d], w1, b1, w2, b2, step_w1, step_b1, step_w2, step_b2): as fused_ttt_linear,
        one weight and one step sum per state tensor.
    """
    check_kernel_inputs(q, (q.shape[-1], w1.shape[-1]), mini_batch_size)
    check_restarts(resets, initial, q, (w1, b1, w2, b2), mini_batch_size)
    return TTTMLPFunction.apply(mini_batch_size, time_checkpoint_group, resets, q, k, v, lr, coeff, ln_weight,
                                ln_bias, w1, b1, w2, b2, *(initial or ()))
