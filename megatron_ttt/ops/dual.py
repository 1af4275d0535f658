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

`backend` (run_options.DUAL_FORM_BACKENDS) picks how each mini-batch runs; the autograd step of
"torch" (`_block`) is the reference the others are compared with:
- "compile": `torch.compile` of the same step (`compiled_step`): one fused graph, and its
  backward, per kind of mini-batch (complete or not, carried gradients or not, grad mode,
  shapes), reused for every further mini-batch, call, sequence length and layer of those shapes;
- "manual": TTT-Linear's mini-batches through one autograd.Function per group with its backward
  written out (ops/linear_scan.py); TTT-MLP has none yet and runs the autograd step, saying so once.
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
from megatron_ttt.ops.inputs import MiniBatches, TTTInputs
from megatron_ttt.ops.linear_scan import linear_scan
from megatron_ttt.ops.state import TTTState, from_rows, head_param_rows, to_rows
from megatron_ttt.run_options import DUAL_FORM_BACKENDS, check_backend, check_time_checkpoint_group, warn_once


def ttt_dual(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16, time_checkpoint_group: int = 0,
             backend: str = "torch") -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence, in dual form.

    Args:
        inputs: q, k, v [B,H,T,d], lr [B,H,T], token_offset [b], the inner LayerNorm [H,d].
        state: the state before the first token (TTTState.initial for a fresh sequence).
        mini_batch_size: b, tokens per inner gradient step.
        time_checkpoint_group: G, mini-batches per time-axis checkpoint group; 0 stores everything.
        backend: "torch", "compile" or "manual": how each mini-batch runs (the module docstring).

    Returns:
        z: [B,H,T,d], z_t = q_t + LN(g_{theta_t}(q_t)).
        the state after the last token.
    """
    inputs.check(state, mini_batch_size)
    check_time_checkpoint_group(time_checkpoint_group)
    check_backend(backend, DUAL_FORM_BACKENDS)
    B, H, T, d = inputs.q.shape
    b = mini_batch_size
    lead = state.position
    n_blocks = -(-(lead + T) // b)
    tail = n_blocks * b - lead - T

    def blocks(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, lead, tail)) if x.dim() == 4 else F.pad(x, (lead, tail))
        return padded.reshape(B * H, n_blocks, b, *x.shape[3:])

    coeff = token_coefficients(inputs.token_offset)
    q_blk, k_blk, lr_blk = blocks(inputs.q), blocks(inputs.k), blocks(inputs.lr)
    # eta[n,i,j] = c_i lr_j for j <= i: [N, n_blocks, b, b]
    eta = torch.tril(coeff[:, None] * lr_blk.unsqueeze(-2))
    # Everything that does not depend on the state, for all mini-batches at once; the first
    # layer sees (q, k) on both paths, so its dual-form mixing matrix is known up front.
    attn0 = eta * (q_blk @ k_blk.mT + 1)
    shared = (coeff.unsqueeze(0), head_param_rows(inputs.ln_weight, B), head_param_rows(inputs.ln_bias, B))
    per_token = (q_blk, k_blk, blocks(inputs.v) - k_blk, lr_blk, eta, attn0)
    if backend == "compile":
        # Block-major storage: every mini-batch's slice is then contiguous with the same strides
        # at any sequence length, so the compiled step's guards hold for every call.
        per_token = tuple(x.movedim(1, 0).contiguous().movedim(0, 1) for x in per_token)
    mini_batches = MiniBatches(*per_token, *(x.unsqueeze(1).expand(x.shape[0], n_blocks, *x.shape[1:])
                                             for x in shared))
    group = time_checkpoint_group or n_blocks
    weights = tuple(to_rows(w) for w in state.weights)
    grads = None if state.grads is None else tuple(to_rows(g) for g in state.grads)
    last_complete = (lead + T) % b == 0
    run_group = _group_runner(backend, len(weights))

    outs = []
    for start, run in zip(range(0, n_blocks, group), mini_batches.split(group)):
        complete = [n < n_blocks - 1 or last_complete for n in range(start, min(start + group, n_blocks))]
        args = (*weights, *(grads or ()), *run)
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


def _group_runner(backend: str, n_weights: int):
    """What runs a group of mini-batches under `backend`: linear_scan, or `_one_by_one` over a
    one-mini-batch step. TTT-MLP (4 weights) has no written-out backward: "manual" warns once."""
    if backend == "manual" and n_weights == 2:
        return linear_scan
    if backend == "manual":
        warn_once("backend 'manual' has no written-out backward for TTT-MLP; using the autograd dual form")
    return functools.partial(_one_by_one, compiled_step() if backend == "compile" else _block)


def _scan(scan_spec, *args) -> tuple[torch.Tensor, ...]:
    """A run of consecutive mini-batches: (outputs z, *weights after, *grads after).

    args: the state's weights (and grads), then the run's MiniBatches, flattened: all top-level
    tensors, so a checkpoint saves them. scan_spec's runner takes the run (`_one_by_one` or
    linear_scan). The output LayerNorm runs here too, so a checkpointed group keeps none of its
    intermediates.
    """
    complete, n_weights, has_grads, run_group = scan_spec
    weights = args[:n_weights]
    grads = args[n_weights : 2 * n_weights] if has_grads else None
    run = MiniBatches(*args[2 * n_weights if has_grads else n_weights :])
    zbar, weights, grads = run_group(weights, grads, run, complete)
    z = run.q + layer_norm(zbar, run.ln_w, run.ln_b)
    return (z, *weights, *(grads or ()))


def _one_by_one(step, weights, grads, run: MiniBatches, complete):
    """A group's mini-batches through a one-mini-batch step: (Zbar [N,g,L,d], weights, grads after)."""
    outs = []
    for mini_batch, is_complete in zip(run.unbind(), complete):
        out, weights, grads = step(weights, grads, mini_batch, is_complete)
        outs.append(out)
    return torch.stack(outs, dim=1), weights, grads


def _unflatten(outputs: tuple[torch.Tensor, ...], n_weights: int):
    """_scan's flat outputs -> (z, weights, grads or None)."""
    z, *state = outputs
    return z, tuple(state[:n_weights]), tuple(state[n_weights:]) or None


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


def _block(weights, grads, mb: MiniBatches, complete):
    """One mini-batch in dual form (`mb`'s tensors without their run axis: q [N,b,d], coeff [1,b], ...)."""
    inputs, preacts = layers_forward(weights, mb.k)
    key_grads = keys_backward(weights, preacts, mb.target, mb.ln_w, mb.ln_b)
    pairs = layers(weights)
    h = mb.q
    for index, ((w, bias), x, g) in enumerate(zip(pairs, inputs, key_grads)):
        attn = mb.attn0 if index == 0 else mb.eta * (torch.bmm(h, x.mT) + 1)
        zbar = torch.baddbmm(bias.unsqueeze(-2), h, w) - torch.bmm(attn, g)
        if grads is not None:
            acc_w, acc_b = grads[2 * index], grads[2 * index + 1]
            zbar = zbar - mb.coeff.mT * torch.baddbmm(acc_b.unsqueeze(-2), h, acc_w)
        h = gelu_tanh(zbar) if index < len(pairs) - 1 else zbar
    step = lr_weighted_grads(inputs, key_grads, mb.lr)
    if grads is not None:
        step = tuple(s + a for s, a in zip(step, grads))
    if not complete:
        return h, weights, step
    last = mb.coeff[0, -1]
    return h, tuple(w - last * s for w, s in zip(weights, step)), None


@functools.cache
def compiled_step():
    """`_block` through torch.compile, built on first use. fullgraph: a graph break would split
    the step back into many small calls, so it is an error instead."""
    return torch.compile(_block, fullgraph=True, dynamic=False)
