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
from collections.abc import Callable
from typing import NamedTuple

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
from megatron_ttt.ops.documents import DocumentStarts, document_layout
from megatron_ttt.ops.inputs import MiniBatches, TTTInputs
from megatron_ttt.ops.linear_scan import linear_scan
from megatron_ttt.ops.state import TTTState, from_rows, head_param_rows, to_rows
from megatron_ttt.run_options import DUAL_FORM_BACKENDS, check_backend, check_time_checkpoint_group, warn_once


def ttt_dual(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16, time_checkpoint_group: int = 0,
             backend: str = "torch", documents: DocumentStarts | None = None) -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence, in dual form.

    Args:
        inputs: q, k, v [B,H,T,d], lr [B,H,T], token_offset [b], the inner LayerNorm [H,d].
        state: the state before the first token (TTTState.initial for a fresh sequence).
        mini_batch_size: b, tokens per inner gradient step.
        time_checkpoint_group: G, mini-batches per time-axis checkpoint group; 0 stores everything.
        backend: "torch", "compile" or "manual": how each mini-batch runs (the module docstring).
        documents: where packed documents begin (ops/documents.py); None: one sequence.

    Returns:
        z: [B,H,T,d], z_t = q_t + LN(g_{theta_t}(q_t)).
        the state after the last token (with documents: its position per row, gradient sums held).
    """
    inputs.check(state, mini_batch_size)
    check_time_checkpoint_group(time_checkpoint_group)
    check_backend(backend, DUAL_FORM_BACKENDS)
    B, H, T, d = inputs.q.shape
    b = mini_batch_size
    if documents is not None:
        documents.check(B, T, state.weights)
    grid = _uniform_grid(state.position, T, b) if documents is None else _document_grid(documents, state, H, b)
    n_blocks = len(grid.complete)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return grid.place(x).reshape(B * H, n_blocks, b, *x.shape[3:])

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
    initial = () if documents is None else tuple(to_rows(w.unsqueeze(0).expand(B, *w.shape)) for w in documents.initial)
    run_group = _group_runner(backend, len(weights))

    outs = []
    for start, run in zip(range(0, n_blocks, group), mini_batches.split(group)):
        span = slice(start, start + group)
        args = (*weights, *(grads or ()), *initial, *run)
        scan_spec = (grid.complete[span], grid.restarts[span], len(weights), grads is not None, bool(initial),
                     run_group)
        if time_checkpoint_group:
            outputs = _GroupCheckpoint.apply(scan_spec, *args)
        else:
            outputs = _scan(scan_spec, *args)
        z, weights, grads = _unflatten(outputs, len(weights))
        outs.append(z)

    z = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    z = grid.take(z.reshape(B, H, n_blocks * b, d))
    if documents is not None and grads is None:
        grads = tuple(torch.zeros_like(w) for w in weights)
    new_state = TTTState(
        tuple(from_rows(w, B, H) for w in weights),
        None if grads is None else tuple(from_rows(g, B, H) for g in grads),
        grid.position,
    )
    return z, new_state


class _Grid(NamedTuple):
    """Where a call's tokens sit on its mini-batches, and what happens at each mini-batch."""

    place: Callable[[torch.Tensor], torch.Tensor]
    """[B,H,T,...] -> [B,H,n*b,...]: the tokens on the grid, zeros (lr = 0) elsewhere."""
    take: Callable[[torch.Tensor], torch.Tensor]
    """[B,H,n*b,d] -> [B,H,T,d]."""
    complete: list
    """Per mini-batch: the state moves at its end (True), not (False), or per row ([N] bool)."""
    restarts: list
    """Per mini-batch: None, or [N] bool, the rows whose state restarts at its start."""
    position: int | torch.Tensor
    """The state's position after the call."""


def _uniform_grid(lead: int, T: int, b: int) -> _Grid:
    """One sequence: a state `lead` tokens into a mini-batch gets that many leading pad tokens,
    and the tail is padded to a whole mini-batch."""
    n_blocks = -(-(lead + T) // b)
    tail = n_blocks * b - lead - T

    def place(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, lead, tail)) if x.dim() == 4 else F.pad(x, (lead, tail))

    complete = [n < n_blocks - 1 or (lead + T) % b == 0 for n in range(n_blocks)]
    return _Grid(place, lambda z: z[:, :, lead : lead + T], complete, [None] * n_blocks, (lead + T) % b)


def _document_grid(documents: DocumentStarts, state: TTTState, heads: int, b: int) -> _Grid:
    """Packed documents (ops/documents.py); per-mini-batch flags that hold for every row become
    Python bools, so all but a call's last few mini-batches run as in one sequence."""
    layout = document_layout(documents.starts, state.position, b)
    complete, resets = (flags.repeat_interleave(heads, dim=0) for flags in (layout.complete, layout.resets))
    every, some = layout.complete.all(dim=0).tolist(), layout.complete.any(dim=0).tolist()
    complete = [True if e else complete[:, n] if s else False for n, (e, s) in enumerate(zip(every, some))]
    restarts = [resets[:, n] if s else None for n, s in enumerate(layout.resets.any(dim=0).tolist())]
    return _Grid(layout.place, layout.take, complete, restarts, layout.position)


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

    args: the state's weights (and grads, and the initial weights documents restart from), then
    the run's MiniBatches, flattened: all top-level tensors, so a checkpoint saves them.
    scan_spec's runner takes the run (`_one_by_one` or linear_scan) in segments that each restart
    only at their start and move the state at the end of every mini-batch but their last (one
    segment without documents). The output LayerNorm runs here too, so a checkpointed group keeps
    none of its intermediates.
    """
    complete, restarts, n_weights, has_grads, has_initial, run_group = scan_spec
    sizes = (n_weights, n_weights if has_grads else 0, n_weights if has_initial else 0)
    weights, grads, initial = (args[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(3))
    grads = grads or None
    run = MiniBatches(*args[sum(sizes):])
    segments = _segments(complete, restarts)
    parts = [run] if len(segments) == 1 else run.split([stop - first for first, stop in segments])
    zbars = []
    for (first, stop), part in zip(segments, parts):
        if restarts[first] is not None:
            weights, grads = _restart(weights, grads, restarts[first], initial)
        per_row = not all(isinstance(c, bool) for c in complete[first:stop])
        runner = functools.partial(_one_by_one, _block) if per_row else run_group
        zbar, weights, grads = runner(weights, grads, part, complete[first:stop])
        zbars.append(zbar)
    zbar = torch.cat(zbars, dim=1) if len(zbars) > 1 else zbars[0]
    z = run.q + layer_norm(zbar, run.ln_w, run.ln_b)
    return (z, *weights, *(grads or ()))


def _segments(complete: list, restarts: list) -> list[tuple[int, int]]:
    """(first, stop) mini-batch ranges: a new one at every restart, at every per-row mini-batch
    (which is a segment of its own) and after every mini-batch that does not move the state."""
    firsts = [n for n in range(len(complete)) if n == 0 or restarts[n] is not None
              or not isinstance(complete[n], bool) or complete[n - 1] is not True]
    return list(zip(firsts, firsts[1:] + [len(complete)]))


def _restart(weights, grads, rows: torch.Tensor, initial):
    """The state with the initial weights (and no gradient sums) in `rows` ([N] bool)."""
    weights = tuple(torch.where(_against(rows, w), w0, w) for w0, w in zip(initial, weights))
    return weights, None if grads is None else tuple(torch.where(_against(rows, g), 0.0, g) for g in grads)


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
    if complete is False:
        return h, weights, step
    last = mb.coeff[0, -1]
    moved = tuple(w - last * s for w, s in zip(weights, step))
    if complete is True:
        return h, moved, None
    # Per row (packed documents): rows whose last document ended keep their state and sums.
    return (h, tuple(torch.where(_against(complete, m), m, w) for m, w in zip(moved, weights)),
            tuple(torch.where(_against(complete, s), 0.0, s) for s in step))


def _against(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-row flag [N] shaped to broadcast against x [N, ...]."""
    return rows.reshape(-1, *([1] * (x.dim() - 1)))


@functools.cache
def compiled_step():
    """`_block` through torch.compile, built on first use. fullgraph: a graph break would split
    the step back into many small calls, so it is an error instead."""
    return torch.compile(_block, fullgraph=True, dynamic=False)
