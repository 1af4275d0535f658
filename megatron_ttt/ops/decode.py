"""One-token decode step of the TTT inner loop: constant work and memory per token.

The state holds the weights of the current mini-batch's start and the lr-weighted sum of the
gradients seen so far in it (TTTState.grads); a token adds its own gradient and reads out with
theta_i = theta - c_i * acc, exactly what the dual form computes for the same position.
"""

import torch

from megatron_ttt.ops.inner import (
    gelu_tanh,
    keys_backward,
    keys_forward,
    layer_norm,
    layers,
    lr_weighted_grads,
    token_coefficients,
)
from megatron_ttt.ops.state import TTTState, check_inputs


def ttt_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    token_offset: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    state: TTTState,
    *,
    mini_batch_size: int = 16,
) -> tuple[torch.Tensor, TTTState]:
    """One token: q, k, v [B,H,1,d], lr [B,H,1]; otherwise as ops.dual.ttt_dual. Returns z [B,H,1,d]."""
    check_inputs(q, k, v, lr, token_offset, ln_weight, ln_bias, state, mini_batch_size)
    B, H, T, d = q.shape
    if T != 1:
        raise ValueError(f"ttt_decode_step takes one token, got T={T}; use ttt_dual for a prefix")
    rows = lambda x: x.reshape(B * H, *x.shape[2:])  # noqa: E731
    q, k, v, lr = rows(q), rows(k), rows(v), rows(lr)
    ln_w = ln_weight.reshape(1, H, 1, d).expand(B, H, 1, d).reshape(B * H, 1, d)
    ln_b = ln_bias.reshape(1, H, 1, d).expand(B, H, 1, d).reshape(B * H, 1, d)
    weights = tuple(rows(w) for w in state.weights)

    inputs, preacts = keys_forward(weights, k)
    acc = lr_weighted_grads(inputs, keys_backward(weights, preacts, v - k, ln_w, ln_b), lr)
    if state.grads is not None:
        acc = tuple(a + rows(g) for a, g in zip(acc, state.grads))
    c = token_coefficients(token_offset)[state.position]
    current = tuple(w - c * a for w, a in zip(weights, acc))

    h = q
    pairs = layers(current)
    for index, (w, b) in enumerate(pairs):
        h = torch.baddbmm(b.unsqueeze(-2), h, w)
        if index < len(pairs) - 1:
            h = gelu_tanh(h)
    z = (q + layer_norm(h, ln_w, ln_b)).reshape(B, H, 1, d)

    unrows = lambda x: x.reshape(B, H, *x.shape[1:])  # noqa: E731
    position = state.position + 1
    if position == mini_batch_size:
        return z, TTTState(tuple(unrows(w) for w in current), None, 0)
    return z, TTTState(state.weights, tuple(unrows(a) for a in acc), position)
