"""One-token decode step of the TTT inner loop: constant work and memory per token.

The state holds the weights of the current mini-batch's start and the lr-weighted sum of the
gradients seen so far in it (TTTState.grads); a token adds its own gradient and reads out with
theta_i = theta - c_i * acc, exactly what the dual form computes for the same position.

A fixed-shape state (TTTState.fixed_shape: tensor position, grads always held) takes the same
step without a Python branch on the position: at the mini-batch's last token the weights move
and the gradient sum restarts at zero by `torch.where`, so one compiled graph (or one CUDA
graph) serves every token. Its values equal the variable-shape step's bit for bit.
"""

import torch

from megatron_ttt.ops.inner import keys_backward, layer_norm, layers_forward, lr_weighted_grads, token_coefficients
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.state import TTTState, from_rows, head_param_rows, to_rows


def ttt_decode_step(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16) -> tuple[torch.Tensor, TTTState]:
    """One token: q, k, v [B,H,1,d], lr [B,H,1]; otherwise as ops.dual.ttt_dual. Returns z [B,H,1,d]."""
    inputs.check(state, mini_batch_size)
    B, H, T, _ = inputs.q.shape
    if T != 1:
        raise ValueError(f"ttt_decode_step takes one token, got T={T}; use ttt_dual for a prefix")
    q, k, v, lr = (to_rows(x) for x in (inputs.q, inputs.k, inputs.v, inputs.lr))
    ln_w, ln_b = head_param_rows(inputs.ln_weight, B), head_param_rows(inputs.ln_bias, B)
    weights = tuple(to_rows(w) for w in state.weights)

    layer_inputs, preacts = layers_forward(weights, k)
    acc = lr_weighted_grads(layer_inputs, keys_backward(weights, preacts, v - k, ln_w, ln_b), lr)
    if state.grads is not None:
        acc = tuple(a + to_rows(g) for a, g in zip(acc, state.grads))
    coeff = token_coefficients(inputs.token_offset)
    fixed = isinstance(state.position, torch.Tensor)
    # A gather, not indexing, for a tensor position: indexing would read its value on the host.
    c = coeff.index_select(0, state.position.reshape(1)) if fixed else coeff[state.position]
    current = tuple(w - c * a for w, a in zip(weights, acc))

    z = from_rows(q + layer_norm(layers_forward(current, q)[1][-1], ln_w, ln_b), B, H)

    if fixed:
        return z, _fixed_shape_next(state.position, weights, current, acc, mini_batch_size, B, H)
    position = state.position + 1
    if position == mini_batch_size:
        return z, TTTState(tuple(from_rows(w, B, H) for w in current), None, 0)
    return z, TTTState(state.weights, tuple(from_rows(a, B, H) for a in acc), position)


def _fixed_shape_next(position: torch.Tensor, weights, current, acc, mini_batch_size: int, B: int, H: int) -> TTTState:
    """The state after a token, in fixed shape: at the mini-batch's end the weights move and the
    sum restarts (zeros, where the variable-shape state holds None)."""
    ends = position == mini_batch_size - 1
    return TTTState(tuple(from_rows(torch.where(ends, cur, w), B, H) for w, cur in zip(weights, current)),
                    tuple(from_rows(torch.where(ends, 0.0, a), B, H) for a in acc),
                    torch.remainder(position + 1, mini_batch_size))
