"""`ttt_inner_loop`: the one entry point layers call; it picks the Triton kernels or the PyTorch dual form.

"auto" runs the fused Triton kernels (megatron_ttt.kernels) on CUDA tensors they support and the
PyTorch dual form (`ttt_dual`, their twin) everywhere else; "triton" and "torch" force one, and
"triton" says why when it cannot run. Forced, the kernels also run on CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1), which is how the tests compare them with the twin; "auto"
never interprets.
"""

import os

import torch

from megatron_ttt.kernels.host import unsupported
from megatron_ttt.ops.dual import ttt_dual
from megatron_ttt.ops.inner import token_coefficients
from megatron_ttt.ops.state import TTTState, check_inputs

BACKENDS = ("auto", "triton", "torch")


def triton_unsupported(q: torch.Tensor, state: TTTState) -> str | None:
    """Why the Triton kernels cannot run these inputs, or None if they can."""
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
    checkpoint_group: int = 0,
    backend: str = "auto",
) -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear or TTT-MLP (chosen by the state's weights) over a sequence.

    Arguments and results as `ttt_dual`; backend is "auto", "triton" or "torch".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_inputs(q, k, v, lr, token_offset, ln_weight, ln_bias, state, mini_batch_size)
    if backend == "triton" and (reason := triton_unsupported(q, state)):
        raise ValueError(f"backend 'triton' cannot run: {reason}")
    if backend == "torch" or (backend == "auto" and (not q.is_cuda or triton_unsupported(q, state))):
        return ttt_dual(q, k, v, lr, token_offset, ln_weight, ln_bias, state,
                        mini_batch_size=mini_batch_size, checkpoint_group=checkpoint_group)
    return _fused(q, k, v, lr, token_offset, ln_weight, ln_bias, state, mini_batch_size, checkpoint_group)


def _fused(q, k, v, lr, token_offset, ln_weight, ln_bias, state, mini_batch_size, checkpoint_group):
    # Imported here: Triton decides between compiling and interpreting when a kernel is defined.
    from megatron_ttt.kernels.ttt_linear import fused_ttt_linear
    from megatron_ttt.kernels.ttt_mlp import fused_ttt_mlp

    op = fused_ttt_linear if len(state.weights) == 2 else fused_ttt_mlp
    coeff = token_coefficients(token_offset)
    z, *rest = op(q, k, v, lr, coeff, ln_weight, ln_bias, *state.weights,
                  mini_batch_size=mini_batch_size, checkpoint_group=checkpoint_group)
    n = len(state.weights)
    position = q.shape[2] % mini_batch_size
    return z, TTTState(tuple(rest[:n]), tuple(rest[n:]) if position else None, position)
