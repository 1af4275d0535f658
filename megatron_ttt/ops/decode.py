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

from megatron_ttt.ops.documents import DocumentStarts
from megatron_ttt.ops.inner import keys_backward, layer_norm, layers_forward, lr_weighted_grads, token_coefficients
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.state import TTTState, from_rows, head_param_rows, to_rows


def ttt_decode_step(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16,
                    documents: DocumentStarts | None = None) -> tuple[torch.Tensor, TTTState]:
    """One token: q, k, v [B,H,1,d], lr [B,H,1]; otherwise as ops.dual.ttt_dual. Returns z [B,H,1,d].
    With documents, a sequence whose token starts a document restarts from the initial weights,
    and the state keeps one position per sequence."""
    inputs.check(state, mini_batch_size)
    B, H, T, _ = inputs.q.shape
    if T != 1:
        raise ValueError(f"ttt_decode_step takes one token, got T={T}; use ttt_dual for a prefix")
    if documents is not None:
        documents.check(B, T, state.weights)
        state = _restarted(state, documents, B)
    q, k, v, lr = (to_rows(x) for x in (inputs.q, inputs.k, inputs.v, inputs.lr))
    ln_w, ln_b = head_param_rows(inputs.ln_weight, B), head_param_rows(inputs.ln_bias, B)
    weights = tuple(to_rows(w) for w in state.weights)

    layer_inputs, preacts = layers_forward(weights, k)
    acc = lr_weighted_grads(layer_inputs, keys_backward(weights, preacts, v - k, ln_w, ln_b), lr)
    if state.grads is not None:
        acc = tuple(a + to_rows(g) for a, g in zip(acc, state.grads))
    coeff = token_coefficients(inputs.token_offset)
    fixed = isinstance(state.position, torch.Tensor)
    if fixed:
        # A gather, not indexing, for a tensor position: indexing would read its value on the host.
        c = coeff.index_select(0, state.position.reshape(-1))
        current = tuple(w - _per_row(c, H, w) * a for w, a in zip(weights, acc))
    else:
        current = tuple(w - coeff[state.position] * a for w, a in zip(weights, acc))

    z = from_rows(q + layer_norm(layers_forward(current, q)[1][-1], ln_w, ln_b), B, H)

    if fixed:
        return z, _fixed_shape_next(state.position, weights, current, acc, mini_batch_size, B, H)
    position = state.position + 1
    if position == mini_batch_size:
        return z, TTTState(tuple(from_rows(w, B, H) for w in current), None, 0)
    return z, TTTState(state.weights, tuple(from_rows(a, B, H) for a in acc), position)


def _per_row(values: torch.Tensor, heads: int, like: torch.Tensor) -> torch.Tensor:
    """One value for all rows ([1]) or one per sequence ([B]), repeated over `heads` rows each
    and shaped to broadcast against `like` [N, ...]."""
    rows = values.repeat_interleave(heads) if values.numel() > 1 else values
    return rows.reshape(-1, *([1] * (like.dim() - 1)))


def _restarted(state: TTTState, documents: DocumentStarts, batch: int) -> TTTState:
    """The state with one position per sequence, restarted (initial weights, no sums, position 0)
    where the token starts a document."""
    start = documents.starts[:, 0]
    position = torch.as_tensor(state.position, dtype=torch.int64, device=start.device).expand(batch)
    grads = state.grads or tuple(torch.zeros_like(w) for w in state.weights)

    def pick(new, old):
        return torch.where(start.reshape(-1, *([1] * (old.dim() - 1))), new, old)

    return TTTState(tuple(pick(w0.unsqueeze(0), w) for w0, w in zip(documents.initial, state.weights)),
                    tuple(pick(torch.zeros_like(g), g) for g in grads), torch.where(start, 0, position))


def _fixed_shape_next(position: torch.Tensor, weights, current, acc, mini_batch_size: int, B: int, H: int) -> TTTState:
    """The state after a token, in fixed shape: at the mini-batch's end the weights move and the
    sum restarts (zeros, where the variable-shape state holds None); per sequence for a [B] position."""
    ends = position == mini_batch_size - 1
    return TTTState(tuple(from_rows(torch.where(_per_row(ends.reshape(-1), H, w), cur, w), B, H)
                          for w, cur in zip(weights, current)),
                    tuple(from_rows(torch.where(_per_row(ends.reshape(-1), H, a), 0.0, a), B, H) for a in acc),
                    torch.remainder(position + 1, mini_batch_size))
