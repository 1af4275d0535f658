"""`ttt_inner_loop`: the one entry point layers call; it picks the Triton kernels or the PyTorch dual form.

"auto" runs the fused Triton kernels (megatron_ttt.kernels) on CUDA tensors they support and the
PyTorch dual form (`ttt_dual`, their twin) everywhere else; "triton" and "torch" force one, and
"triton" says why when it cannot run ("auto" says so once where the kernels would not fit the GPU).
Forced, the kernels also run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1),
which is how the tests compare them with the twin; "auto" never interprets. The other dual-form
backends (run_options.DUAL_FORM_BACKENDS) pass through to `ttt_dual`: "compile" runs each
mini-batch's step through torch.compile, "manual" TTT-Linear's backward written out
(ops/linear_scan.py).
"""

import os

import torch
import torch.nn.functional as F

from megatron_ttt.ops.documents import DocumentStarts, document_layout
from megatron_ttt.ops.dual import ttt_dual
from megatron_ttt.ops.inner import token_coefficients
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.state import TTTState
from megatron_ttt.run_options import DUAL_FORM_BACKENDS, check_backend, warn_once


def triton_unsupported(q: torch.Tensor, state: TTTState) -> str | None:
    """Why the Triton kernels cannot run these inputs, or None if they can."""
    from megatron_ttt.kernels.host import unsupported  # Triton loads when the kernels are first wanted

    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the tensors are on {q.device}, not CUDA (set TRITON_INTERPRET=1 to interpret the kernels on CPU)"
    if torch.as_tensor(state.position).any():
        return (f"the state is {state.position} tokens into a mini-batch; the kernels start at a mini-batch "
                "boundary")
    return unsupported(q, (q.shape[-1], *(w.shape[-1] for w in state.weights[0::2])))


def ttt_inner_loop(inputs: TTTInputs, state: TTTState, *, mini_batch_size: int = 16, time_checkpoint_group: int = 0,
                   backend: str = "auto", documents: DocumentStarts | None = None,
                   final_state: bool = True) -> tuple[torch.Tensor, TTTState | None]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence.

    Arguments and results as `ttt_dual`; backend is one of run_options.BACKENDS. final_state
    False: the caller drops the state after the call (training), so the kernels may run packed
    documents whose sequences end at different mini-batch positions; the state returned is None.
    """
    check_backend(backend)
    inputs.check(state, mini_batch_size)
    q = inputs.q
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda)
    reason = triton_unsupported(q, state) if use_triton else None
    if use_triton and not reason and q.is_cuda:
        reason = _shared_memory_shortfall(inputs, state, mini_batch_size, time_checkpoint_group)
        if reason and backend == "auto":
            warn_once(f"the Triton TTT kernels cannot run here ({reason}); using the PyTorch dual form")
    if backend == "triton" and reason:
        raise ValueError(f"backend 'triton' cannot run: {reason}")
    if not use_triton or reason:
        # "auto" without the kernels is the dual form's autograd step.
        dual_backend = backend if backend in DUAL_FORM_BACKENDS else "torch"
        z, state = ttt_dual(inputs, state, mini_batch_size=mini_batch_size,
                            time_checkpoint_group=time_checkpoint_group, backend=dual_backend, documents=documents)
        return z, state if final_state else None
    if documents is not None:
        return _fused_documents(inputs, state, mini_batch_size, time_checkpoint_group, documents, final_state)
    z, *rest = _fused(inputs, state.weights, mini_batch_size, time_checkpoint_group)
    n = len(state.weights)
    position = q.shape[2] % mini_batch_size
    return z, TTTState(tuple(rest[:n]), tuple(rest[n:]) if position else None, position)


def _fused(inputs: TTTInputs, weights: tuple[torch.Tensor, ...], mini_batch_size: int, time_checkpoint_group: int,
           **documents) -> tuple[torch.Tensor, ...]:
    """The Triton op that fits the weights: (z, *final weights, *step sums of a last unfinished mini-batch)."""
    fused, _ = _kernels(weights)
    return fused(inputs.q, inputs.k, inputs.v, inputs.lr, token_coefficients(inputs.token_offset), inputs.ln_weight,
                 inputs.ln_bias, *weights, mini_batch_size=mini_batch_size,
                 time_checkpoint_group=time_checkpoint_group, **documents)


def _fused_documents(inputs: TTTInputs, state: TTTState, mini_batch_size: int, time_checkpoint_group: int,
                     documents: DocumentStarts, final_state: bool) -> tuple[torch.Tensor, TTTState | None]:
    """Packed documents through the kernels: the tokens laid on the grid (ops/documents.py), the
    kernels restarting the state where a document begins. Every sequence's state after the call is
    the kernels' only where all end at the same grid position; otherwise the dual form runs if the
    caller keeps the state."""
    B, _, T, _ = inputs.q.shape
    documents.check(B, T, state.weights)
    layout = document_layout(documents.starts, 0, mini_batch_size)
    end = int(layout.ends.max())
    aligned = bool((layout.ends == end).all())
    if final_state and not aligned:
        z, state = ttt_dual(inputs, state, mini_batch_size=mini_batch_size,
                            time_checkpoint_group=time_checkpoint_group, documents=documents)
        return z, state
    placed = inputs._replace(**{n: layout.place(getattr(inputs, n))[:, :, :end] for n in ("q", "k", "v", "lr")})
    z, *rest = _fused(placed, state.weights, mini_batch_size, time_checkpoint_group, resets=layout.resets,
                      initial=documents.initial)
    z = layout.take(F.pad(z, (0, 0, 0, layout.length - end)))
    if not final_state:
        return z, None
    n = len(state.weights)
    return z, TTTState(tuple(rest[:n]), tuple(rest[n:]), layout.position)


def _shared_memory_shortfall(inputs: TTTInputs, state: TTTState, mini_batch_size: int,
                             time_checkpoint_group: int) -> str | None:
    """Why the kernels would not launch on this GPU; the backward counts only if a gradient is wanted."""
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (*inputs, *state.weights))
    return _kernels(state.weights)[1].shared_memory_shortfall(inputs.q, state.weights, mini_batch_size,
                                                              time_checkpoint_group, backward)


def _kernels(weights: tuple[torch.Tensor, ...]):
    """The public function and the autograd.Function of the op that fits the inner weights."""
    # Imported here: Triton decides between compiling and interpreting when a kernel is defined.
    from megatron_ttt.kernels.ttt_linear import TTTLinearFunction, fused_ttt_linear
    from megatron_ttt.kernels.ttt_mlp import TTTMLPFunction, fused_ttt_mlp

    return (fused_ttt_linear, TTTLinearFunction) if len(weights) == 2 else (fused_ttt_mlp, TTTMLPFunction)
