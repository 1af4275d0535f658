"""The mini-batch dual form of the TTT inner loop: the fast path.

Within a mini-batch all token gradients are taken at the weights theta of its start, so the
per-token weights theta_i = theta - c_i (acc + sum_{j<=i} lr_j dl_j/dtheta) never need to exist:
for a layer with input x_j on the keys, h_i on the queries and output gradient g_j,

    h_i W_i + b_i = h_i W + b - sum_{j<=i} c_i lr_j (h_i . x_j + 1) g_j - c_i (h_i acc_W + acc_b)

which is one [L,L] x [L,e] product per layer. The state moves once per mini-batch.

The sequence is padded so that mini-batches align with absolute positions: a state that is
`position` tokens into a mini-batch gets that many leading pad tokens, and the tail is padded
to a whole mini-batch. Pad tokens have lr = 0, so they add exact zeros to every sum.

Time-axis checkpointing keeps only the state at the start of every group of
`time_checkpoint_group` mini-batches: the group runs without a graph in the forward and again, with
one, in the backward. Every mini-batch gets its own view of every shared tensor (unbind), so no
gradient is ever summed across mini-batches except by one final sum; checkpointed gradients are
therefore bitwise equal to stored ones.

`step` picks how each mini-batch runs; the autograd step (`_block`) is the reference the others
are compared with:
- "compiled": `torch.compile` of the same step (`compiled_step`): one fused graph, and its
  backward, per kind of mini-batch (complete or not, carried gradients or not, grad mode,
  shapes), reused for every further mini-batch, call, sequence length and layer of those shapes;
- "manual": TTT-Linear's mini-batches through one autograd.Function per group with its backward
  written out (ops/linear_scan.py); TTT-MLP has none yet and runs the autograd step.
"""

import functools

import torch
import torch.nn.functional as F

from megatron_ttt.ops.inner import (
    gelu_tanh,
    keys_backward,
    layers_forward,
    layer_norm,
    layers,
    lr_weighted_grads,
    token_coefficients,
)
from megatron_ttt.ops.linear_scan import linear_scan
from megatron_ttt.ops.state import TTTState, check_inputs, from_rows, head_param_rows, to_rows
from megatron_ttt.run_options import check_time_checkpoint_group

STEPS = ("autograd", "compiled", "manual")


def ttt_dual(
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
    time_checkpoint_group: int = 0,
    step: str = "autograd",
) -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence, in dual form.

    Args:
        q, k, v: [B,H,T,d] queries, keys, values (RoPE already applied to q and k).
        lr: [B,H,T] per-token inner learning rate, ttt_base_lr * sigmoid(x w_lr + b_lr) / d.
        token_offset: [b] learnable offsets of the token coefficients c[i] = max(0, 1/(i+1) + offset[i]).
        ln_weight, ln_bias: [H,d] the inner LayerNorm.
        state: the state before the first token (TTTState.initial for a fresh sequence).
        mini_batch_size: b, tokens per inner gradient step.
        time_checkpoint_group: G, mini-batches per time-axis checkpoint group; 0 stores everything.
        step: "autograd", "compiled" or "manual": how each mini-batch runs (the module docstring).

    Returns:
        z: [B,H,T,d], z_t = q_t + LN(g_{theta_t}(q_t)).
        the state after the last token.
    """
    check_inputs((q, k, v, lr, token_offset, ln_weight, ln_bias), state, mini_batch_size)
    check_time_checkpoint_group(time_checkpoint_group)
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    B, H, T, d = q.shape
    b = mini_batch_size
    lead = state.position
    n_blocks = -(-(lead + T) // b)
    tail = n_blocks * b - lead - T

    def blocks(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, lead, tail)) if x.dim() == 4 else F.pad(x, (lead, tail))
        return padded.reshape(B * H, n_blocks, b, *x.shape[3:])

    coeff = token_coefficients(token_offset)
    q_blk, k_blk, lr_blk = blocks(q), blocks(k), blocks(lr)
    # eta[n,i,j] = c_i lr_j for j <= i: [N, n_blocks, b, b]
    eta = torch.tril(coeff[:, None] * lr_blk.unsqueeze(-2))
    # Everything that does not depend on the state, for all mini-batches at once; the first
    # layer sees (q, k) on both paths, so its dual-form mixing matrix is known up front.
    attn0 = eta * (q_blk @ k_blk.mT + 1)
    shared = (coeff.unsqueeze(0), head_param_rows(ln_weight, B), head_param_rows(ln_bias, B))
    per_token = (q_blk, k_blk, blocks(v) - k_blk, lr_blk, eta, attn0)
    if step == "compiled":
        # Block-major storage: every mini-batch's slice is then contiguous with the same strides
        # at any sequence length, so the compiled step's guards hold for every call.
        per_token = tuple(x.movedim(1, 0).contiguous().movedim(0, 1) for x in per_token)
    per_block = per_token + tuple(
        x.unsqueeze(1).expand(x.shape[0], n_blocks, *x.shape[1:]) for x in shared
    )
    group = time_checkpoint_group or n_blocks
    # split (then unbind in _scan), not indexing: their backwards are one cat / stack, where
    # per-block indexing would zero-fill a full-size gradient for every block.
    per_group = list(zip(*(x.split(group, dim=1) for x in per_block)))
    weights = tuple(to_rows(w) for w in state.weights)
    grads = None if state.grads is None else tuple(to_rows(g) for g in state.grads)
    last_complete = (lead + T) % b == 0
    if step == "manual" and len(weights) == 2:
        run_group = linear_scan
    else:
        run_group = functools.partial(_one_by_one, compiled_step() if step == "compiled" else _block)

    outs = []
    for start, tensors in zip(range(0, n_blocks, group), per_group):
        complete = [n < n_blocks - 1 or last_complete for n in range(start, min(start + group, n_blocks))]
        args = (*weights, *(grads or ()), *tensors)
        scan_spec = (complete, len(weights), grads is not None, run_group)
        if time_checkpoint_group:
            outputs = _GroupCheckpoint.apply(scan_spec, *args)
        else:
            outputs = _scan(scan_spec, *args)
        z, weights, grads = _unflatten(outputs, len(weights))
        outs.append(z)

    z = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    z = z.reshape(B, H, n_blocks * b, d)[:, :, lead : lead + T]
    new_state = TTTState(
        tuple(from_rows(w, B, H) for w in weights),
        None if grads is None else tuple(from_rows(g, B, H) for g in grads),
        (lead + T) % b,
    )
    return z, new_state


def _scan(scan_spec, *args) -> tuple[torch.Tensor, ...]:
    """A run of consecutive mini-batches: (outputs z, *weights after, *grads after).

    args: the state's weights (and grads), then (q, k, v - k, lr, eta, attn0, coeff, ln_w, ln_b)
    of these mini-batches, [N, blocks, ...] each; all top-level, so a checkpoint saves them.
    scan_spec's runner takes the group's mini-batches (`_one_by_one` or linear_scan). The output
    LayerNorm runs here too, so a checkpointed group keeps none of its intermediates.
    """
    complete, n_weights, has_grads, run_group = scan_spec
    weights = args[:n_weights]
    grads = args[n_weights : 2 * n_weights] if has_grads else None
    per_group = args[2 * n_weights if has_grads else n_weights :]
    zbar, weights, grads = run_group(weights, grads, per_group, complete)
    q, ln_w, ln_b = per_group[0], per_group[7], per_group[8]
    z = q + layer_norm(zbar, ln_w, ln_b)
    return (z, *weights, *(grads or ()))


def _one_by_one(step, weights, grads, per_group, complete):
    """A group's mini-batches through a one-mini-batch step: (Zbar [N,g,L,d], weights, grads after)."""
    outs = []
    for block, is_complete in zip(zip(*(x.unbind(1) for x in per_group)), complete):
        out, weights, grads = step(weights, grads, *block, is_complete)
        outs.append(out)
    return torch.stack(outs, dim=1), weights, grads


def _unflatten(outputs: tuple[torch.Tensor, ...], n_weights: int):
    weights = tuple(outputs[1 : 1 + n_weights])
    grads = tuple(outputs[1 + n_weights :]) or None
    return outputs[0], weights, grads


class _GroupCheckpoint(torch.autograd.Function):
    """_scan that keeps only its inputs and runs again in the backward."""

    @staticmethod
    def forward(ctx, scan_spec, *args):
        ctx.scan_spec = scan_spec
        ctx.save_for_backward(*args)
        with torch.no_grad():
            return _scan(scan_spec, *args)

    @staticmethod
    def backward(ctx, *grad_outputs):
        args = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        with torch.enable_grad():
            outputs = _scan(ctx.scan_spec, *args)
        used = [(y, g) for y, g in zip(outputs, grad_outputs) if y.requires_grad]
        wanted = [x for x in args if x.requires_grad]
        found = iter(torch.autograd.grad([y for y, _ in used], wanted, [g for _, g in used], allow_unused=True))
        return None, *(next(found) if x.requires_grad else None for x in args)


def _block(weights, grads, q, k, target, lr, eta, attn0, coeff, ln_w, ln_b, complete):
    """One mini-batch in dual form: q, k, target [N,b,d], lr [N,b], eta, attn0 [N,b,b], coeff [1,b]."""
    inputs, preacts = layers_forward(weights, k)
    key_grads = keys_backward(weights, preacts, target, ln_w, ln_b)
    pairs = layers(weights)
    h = q
    for index, ((w, bias), x, g) in enumerate(zip(pairs, inputs, key_grads)):
        attn = attn0 if index == 0 else eta * (torch.bmm(h, x.mT) + 1)
        zbar = torch.baddbmm(bias.unsqueeze(-2), h, w) - torch.bmm(attn, g)
        if grads is not None:
            acc_w, acc_b = grads[2 * index], grads[2 * index + 1]
            zbar = zbar - coeff.mT * torch.baddbmm(acc_b.unsqueeze(-2), h, acc_w)
        h = gelu_tanh(zbar) if index < len(pairs) - 1 else zbar
    step = lr_weighted_grads(inputs, key_grads, lr)
    if grads is not None:
        step = tuple(s + a for s, a in zip(step, grads))
    if not complete:
        return h, weights, step
    last = coeff[0, -1]
    return h, tuple(w - last * s for w, s in zip(weights, step)), None


@functools.cache
def compiled_step():
    """`_block` through torch.compile, built on first use. fullgraph: a graph break would split
    the step back into many small calls, so it is an error instead."""
    return torch.compile(_block, fullgraph=True, dynamic=False)
