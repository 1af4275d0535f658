"""The primal form of the TTT inner loop: the slow, obviously correct twin of ops.dual.

Literally the definition: for every mini-batch, the gradient of every token's loss
l_j = 1/2 ||f_theta(k_j) - v_j||^2 at the weights of the mini-batch's start (by torch.func, from
the loss itself, so no hand-derived gradient is shared with the dual form), then explicit
per-token weights theta_i = theta - c_i (acc + sum_{j<=i} lr_j grad_j), then z_i = f_{theta_i}(q_i).
Memory grows with b x (size of theta) per mini-batch; use it for tests and as a baseline.
"""

import torch
from torch.func import grad, vmap

from megatron_ttt.ops.documents import DocumentStarts
from megatron_ttt.ops.inner import gelu_tanh, layer_norm, layers, token_coefficients
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.state import TTTState, from_rows, to_rows


def inner_model(weights: tuple[torch.Tensor, ...], x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor):
    """f(x) = x + LN(g(x)) for one token x [d] of one head."""
    h = x
    pairs = layers(weights)
    for index, (w, b) in enumerate(pairs):
        h = h @ w + b
        if index < len(pairs) - 1:
            h = gelu_tanh(h)
    return x + layer_norm(h, ln_w, ln_b)


def inner_loss(weights, k, v, ln_w, ln_b) -> torch.Tensor:
    """The self-supervised loss of one token of one head."""
    return 0.5 * ((inner_model(weights, k, ln_w, ln_b) - v) ** 2).sum()


# Over tokens (inner), then over rows of batch x heads (outer); weights are shared by the tokens.
_token_grads = vmap(vmap(grad(inner_loss), in_dims=(None, 0, 0, None, None)), in_dims=(0, 0, 0, 0, 0))
_token_outputs = vmap(vmap(inner_model, in_dims=(0, 0, None, None)), in_dims=(0, 0, 0, 0))


def ttt_primal(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16,
               documents: DocumentStarts | None = None) -> tuple[torch.Tensor, TTTState]:
    """Same arguments and results as ops.dual.ttt_dual (without checkpointing or backends)."""
    if documents is not None:
        return _each_document(inputs, state, mini_batch_size, documents)
    inputs.check(state, mini_batch_size)
    B, H, T, d = inputs.q.shape
    b = mini_batch_size
    q, k, v, lr = (to_rows(x) for x in (inputs.q, inputs.k, inputs.v, inputs.lr))
    ln_w, ln_b = (to_rows(x.expand(B, H, d)) for x in (inputs.ln_weight, inputs.ln_bias))
    weights = tuple(to_rows(w) for w in state.weights)
    acc = tuple(torch.zeros_like(w) for w in weights) if state.grads is None else tuple(to_rows(g) for g in state.grads)
    coeff = token_coefficients(inputs.token_offset)

    outputs = []
    t, position = 0, state.position
    while t < T:
        length = min(b - position, T - t)
        span = slice(t, t + length)
        token_grads = _token_grads(weights, k[:, span], v[:, span], ln_w, ln_b)
        lr_b = lr[:, span]
        # acc_i = acc + sum_{j<=i} lr_j grad_j, one per token: [N, length, *weight shape]
        acc_i = tuple(
            a.unsqueeze(1) + torch.cumsum(_per_token(lr_b, g) * g, dim=1) for a, g in zip(acc, token_grads)
        )
        c = coeff[position : position + length].unsqueeze(0)
        weights_i = tuple(w.unsqueeze(1) - _per_token(c, a) * a for w, a in zip(weights, acc_i))
        outputs.append(_token_outputs(weights_i, q[:, span], ln_w, ln_b))
        t, position = t + length, position + length
        if position == b:
            weights, acc, position = tuple(w[:, -1] for w in weights_i), tuple(torch.zeros_like(a) for a in acc), 0
        else:
            acc = tuple(a[:, -1] for a in acc_i)

    z = from_rows(torch.cat(outputs, dim=1), B, H)
    grads = None if position == 0 else tuple(from_rows(a, B, H) for a in acc)
    return z, TTTState(tuple(from_rows(w, B, H) for w in weights), grads, position)


def _per_token(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-token scale [N,L] (or [1,L]) against per-token weights [N,L,...]."""
    return scale.reshape(*scale.shape, *([1] * (like.dim() - scale.dim())))


def _each_document(inputs: TTTInputs, state: TTTState, mini_batch_size: int,
                   documents: DocumentStarts) -> tuple[torch.Tensor, TTTState]:
    """Packed documents by definition: every sequence cut at its documents' starts, each piece run
    alone, from the initial weights (the first from the given state unless a document starts there)."""
    B, _, T, _ = inputs.q.shape
    documents.check(B, T, state.weights)
    outputs, finals = [], []
    for row in range(B):
        bounds = [0] + [t for t in documents.starts[row].nonzero().flatten().tolist() if t > 0] + [T]
        current = _row_state(state, row)
        if documents.starts[row, 0]:
            current = TTTState.initial(documents.initial, 1)
        pieces = []
        for first, stop in zip(bounds, bounds[1:]):
            if first > 0:
                current = TTTState.initial(documents.initial, 1)
            piece = inputs._replace(**{n: getattr(inputs, n)[row : row + 1, :, first:stop]
                                       for n in ("q", "k", "v", "lr")})
            z, current = ttt_primal(piece, current, mini_batch_size=mini_batch_size)
            pieces.append(z)
        outputs.append(torch.cat(pieces, dim=2))
        finals.append(current)
    grads = [f.grads or tuple(torch.zeros_like(w) for w in f.weights) for f in finals]
    return torch.cat(outputs), TTTState(tuple(torch.cat(ws) for ws in zip(*(f.weights for f in finals))),
                                        tuple(torch.cat(gs) for gs in zip(*grads)),
                                        torch.tensor([f.position for f in finals], device=inputs.q.device))


def _row_state(state: TTTState, row: int) -> TTTState:
    """One sequence's part of a state, with an int position (grads None at a boundary)."""
    position = state.position if isinstance(state.position, int) else int(state.position.reshape(-1)[
        row if state.position.dim() else 0])
    grads = None if state.grads is None or position == 0 else tuple(g[row : row + 1] for g in state.grads)
    return TTTState(tuple(w[row : row + 1] for w in state.weights), grads, position)
