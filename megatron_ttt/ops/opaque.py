"""`ttt_sequence_op`: the inner loop over a fresh sequence as one op torch.compile keeps whole.

A compiled block (models/compile.py) would otherwise trace the inner loop: the dual form's
Python loop over mini-batches unrolls into one graph node per op of every mini-batch (thousands
at 2048 tokens, minutes to compile, and a new graph for every sequence length), and the Triton
kernels' autograd.Functions are traced as well. As two torch.library custom ops, the forward and
its backward, the compiler sees two nodes and the inner loop runs exactly as it runs eagerly
(`ttt_inner_loop`, with whatever backend the run asks for: "compile" still compiles each
mini-batch's step, inside the op).

The forward runs without a graph; the backward runs the forward again with one and takes its
gradients, as a time-axis checkpoint group of the whole sequence does. So the ops are functional
(block checkpointing, ZeRO and CP see plain tensors) at the price of one more inner-loop forward
per training step; scoring pays nothing.
"""

import torch

from megatron_ttt.ops.dispatch import ttt_inner_loop
from megatron_ttt.ops.documents import DocumentStarts
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.state import TTTState


def _run(inputs: list[torch.Tensor], weights: list[torch.Tensor], starts: torch.Tensor | None, mini_batch_size: int,
         backend: str, time_checkpoint_group: int) -> torch.Tensor:
    """z [B,H,T,d] of a fresh sequence: every row starts from `weights` (and again at `starts`)."""
    inner = TTTInputs(*inputs)
    weights = tuple(weights)
    state = TTTState.initial(weights, inner.q.shape[0])
    documents = None if starts is None else DocumentStarts(starts, weights)
    z, _ = ttt_inner_loop(inner, state, mini_batch_size=mini_batch_size, backend=backend,
                          time_checkpoint_group=time_checkpoint_group, documents=documents, final_state=False)
    return z


@torch.library.custom_op("megatron_ttt::ttt_sequence", mutates_args=())
def _forward(inputs: list[torch.Tensor], weights: list[torch.Tensor], starts: torch.Tensor | None,
             mini_batch_size: int, backend: str, time_checkpoint_group: int) -> torch.Tensor:
    with torch.no_grad():
        return _run(inputs, weights, starts, mini_batch_size, backend, time_checkpoint_group).contiguous()


@_forward.register_fake
def _(inputs, weights, starts, mini_batch_size, backend, time_checkpoint_group):
    # The compiled graph is built for the strides the fake results have: contiguous, as the real ones.
    return inputs[2].new_empty(inputs[2].shape)  # z has v's shape


def _autograd_dispatch() -> torch._C._ForceDispatchKeyGuard:
    """Autograd back on inside a custom op: the op runs with the autograd dispatch keys excluded
    (its own autograd is the registered formula), so the recomputation would record no graph."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set().remove(keys.AutogradFunctionality).remove(keys.ADInplaceOrView)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("megatron_ttt::ttt_sequence_backward", mutates_args=())
def _backward_op(grad_z: torch.Tensor, inputs: list[torch.Tensor], weights: list[torch.Tensor],
                 starts: torch.Tensor | None, mini_batch_size: int, backend: str,
                 time_checkpoint_group: int) -> list[torch.Tensor]:
    leaves = [x.detach().requires_grad_() for x in (*inputs, *weights)]
    with torch.enable_grad(), _autograd_dispatch():
        z = _run(leaves[:len(inputs)], leaves[len(inputs):], starts, mini_batch_size, backend, time_checkpoint_group)
        grads = torch.autograd.grad(z, leaves, grad_z, allow_unused=True)
    return [torch.zeros(x.shape, dtype=x.dtype, device=x.device) if g is None else g.contiguous()
            for x, g in zip(leaves, grads)]


@_backward_op.register_fake
def _(grad_z, inputs, weights, starts, mini_batch_size, backend, time_checkpoint_group):
    return [x.new_empty(x.shape) for x in (*inputs, *weights)]


def _setup_context(ctx, inputs, output):
    tensors, weights, starts, *options = inputs
    ctx.sizes, ctx.options, ctx.has_starts = (len(tensors), len(weights)), options, starts is not None
    ctx.save_for_backward(*tensors, *weights, *([starts] if starts is not None else []))


def _backward(ctx, grad_z):
    saved = ctx.saved_tensors
    n_inputs, n_weights = ctx.sizes
    inputs, weights = list(saved[:n_inputs]), list(saved[n_inputs:n_inputs + n_weights])
    starts = saved[-1] if ctx.has_starts else None
    grads = torch.ops.megatron_ttt.ttt_sequence_backward(grad_z.contiguous(), inputs, weights, starts, *ctx.options)
    return grads[:n_inputs], grads[n_inputs:], None, None, None, None


_forward.register_autograd(_backward, setup_context=_setup_context)


def ttt_sequence_op(inputs: TTTInputs, weights: tuple[torch.Tensor, ...], *, mini_batch_size: int, backend: str,
                    time_checkpoint_group: int, starts: torch.Tensor | None = None) -> torch.Tensor:
    """z [B,H,T,d] of `ttt_inner_loop` over fresh sequences from the initial weights [H,...]
    (restarting at the packed documents' `starts` [B,T]), as one op for torch.compile."""
    return torch.ops.megatron_ttt.ttt_sequence(list(inputs), list(weights), starts, mini_batch_size, backend,
                                               time_checkpoint_group)
