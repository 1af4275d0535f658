"""Fused TTT-Linear: the whole inner loop of one (batch, head) in one Triton program."""

import torch

from megatron_ttt.kernels.fused import FusedTTTFunction
from megatron_ttt.kernels.host import check_kernel_inputs, check_restarts
from megatron_ttt.kernels.ttt_linear.kernels import ttt_linear_bwd_kernel, ttt_linear_fwd_kernel


class TTTLinearFunction(FusedTTTFunction):
    forward_kernel = ttt_linear_fwd_kernel
    backward_kernel = ttt_linear_bwd_kernel

    @staticmethod
    def sizes(q, state):
        return {"D": q.shape[-1]}


def fused_ttt_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    coeff: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
    *,
    mini_batch_size: int,
    time_checkpoint_group: int = 0,
    resets: torch.Tensor | None = None,
    initial: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """TTT-Linear over a sequence that starts at a mini-batch boundary, forward and backward in Triton.

    Args:
        q, k, v: [B,H,T,d] (fp32, fp16 or bf16; d a power of two >= 16).
        lr: [B,H,T] per-token inner learning rate.
        coeff: [b] token coefficients c[i] (megatron_ttt.ops.inner.token_coefficients).
        ln_weight, ln_bias: [H,d] the inner LayerNorm.
        w0, b0: [B,H,d,d], [B,H,d] the state before the first token (kept in fp32 on chip).
        mini_batch_size: b.
        time_checkpoint_group: G, mini-batches between the states the forward keeps for the
            backward (which replays each group); 0 keeps every mini-batch's state.
        resets: None, or bool [B, ceil(T / b)]: at the start of mini-batch n of batch row i (every
            head) where resets[i, n], the state restarts from `initial` (packed documents, each
            laid to start on a mini-batch). resets[:, 0] may be set: w0, b0 then go unused
            for that row (zero gradient).
        initial: with resets, the learnable initial weights per head (W [H,d,d], b [H,d]); their
            gradient sums those of the state at every restart.

    Returns:
        (z [B,H,T,d], w [B,H,d,d], b [B,H,d], step_w, step_b): z_t = q_t + LN(zbar_t); the
        weights at the start of the last mini-batch if it is incomplete (T % b != 0), else
        after it; the lr-weighted gradient sums of an incomplete last mini-batch (zeros if none).
    """
    check_kernel_inputs(q, (q.shape[-1],), mini_batch_size)
    check_restarts(resets, initial, q, (w0, b0), mini_batch_size)
    return TTTLinearFunction.apply(mini_batch_size, time_checkpoint_group, resets, q, k, v, lr, coeff, ln_weight,
                                   ln_bias, w0, b0, *(initial or ()))
