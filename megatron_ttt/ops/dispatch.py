"""`ttt_inner_loop`: the one entry point layers call; it picks the Triton kernels or the PyTorch dual form.

"auto" runs the fused Triton kernels (megatron_ttt.kernels) on CUDA tensors they support and the
PyTorch dual form (`ttt_dual`, their twin) everywhere else; "triton" and "torch" force one, and
"triton" says why when it cannot run. Forced, the kernels also run on CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1), which is how the tests compare them with the twin; "auto"
never interprets. "compile" runs the dual form with each mini-batch's step through torch.compile,
"manual" with TTT-Linear's backward written out (ops/linear_scan.py).
"""

import os
import warnings

import torch

from megatron_ttt.ops.dual import ttt_dual
from megatron_ttt.ops.inner import token_coefficients
from megatron_ttt.ops.state import TTTState, check_inputs
from megatron_ttt.run_options import check_backend

DUAL_STEPS = {"compile": "compiled", "manual": "manual"}
"""The dual form's step for each backend that names one (ttt_dual's `step`)."""


def triton_unsupported(q: torch.Tensor, state: TTTState) -> str | None:
    """Why the Triton kernels cannot run these inputs, or None if they can."""
    from megatron_ttt.kernels.host import unsupported  # Triton loads when the kernels are first wanted

    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the tensors are on {q.device}, not CUDA (set TRITON_INTERPRET=1 to interpret the kernels on CPU)"
    if state.position:
        return f"the state is {state.position} tokens into a mini-batch; the kernels start at a mini-batch boundary"
    return unsupported(q, (q.shape[-1], *(w.shape[-1] for w in state.weights[0::2])))


def ttt_inner_loop(
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
    backend: str = "auto",
) -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence.

    Arguments and results as `ttt_dual`; backend is "auto", "triton", "torch", "compile" or "manual".
    """
    check_backend(backend)
    inputs = (q, k, v, lr, token_offset, ln_weight, ln_bias)
    check_inputs(inputs, state, mini_batch_size)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda)
    reason = triton_unsupported(q, state) if use_triton else None
    if use_triton and not reason and q.is_cuda:
        reason = _shared_memory_shortfall(inputs, state, mini_batch_size, time_checkpoint_group)
        if reason and backend == "auto":
            warnings.warn(f"the Triton TTT kernels cannot run here ({reason}); using the PyTorch dual form")
    if backend == "triton" and reason:
        raise ValueError(f"backend 'triton' cannot run: {reason}")
    if not use_triton or reason:
        return ttt_dual(q, k, v, lr, token_offset, ln_weight, ln_bias, state, mini_batch_size=mini_batch_size,
                        time_checkpoint_group=time_checkpoint_group, step=DUAL_STEPS.get(backend, "autograd"))
    fused, _ = _kernels(state)
    z, *rest = fused(q, k, v, lr, token_coefficients(token_offset), ln_weight, ln_bias, *state.weights,
                     mini_batch_size=mini_batch_size, time_checkpoint_group=time_checkpoint_group)
    n = len(state.weights)
    position = q.shape[2] % mini_batch_size
    return z, TTTState(tuple(rest[:n]), tuple(rest[n:]) if position else None, position)


def _shared_memory_shortfall(inputs, state: TTTState, mini_batch_size: int, time_checkpoint_group: int) -> str | None:
    """Why the kernels would not launch on this GPU; the backward counts only if a gradient is wanted."""
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (*inputs, *state.weights))
    return _kernels(state)[1].shared_memory_shortfall(inputs[0], state.weights, mini_batch_size, time_checkpoint_group,
                                                      backward)


def _kernels(state: TTTState):
    """The public function and the autograd.Function of the op that fits the state."""
    # Imported here: Triton decides between compiling and interpreting when a kernel is defined.
    from megatron_ttt.kernels.ttt_linear import TTTLinearFunction, fused_ttt_linear
    from megatron_ttt.kernels.ttt_mlp import TTTMLPFunction, fused_ttt_mlp

    return (fused_ttt_linear, TTTLinearFunction) if len(state.weights) == 2 else (fused_ttt_mlp, TTTMLPFunction)
