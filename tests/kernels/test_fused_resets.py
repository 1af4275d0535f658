"""The fused kernels restarting the state at mini-batch starts (packed documents), against the twin.

The twin runs each batch row alone in float64, split at its resets: every segment after a reset
starts from the initial weights, the first (unless mini-batch 0 resets) from the row's given
state. Errors are relative RMS errors of the output, the final state, the step sums and every
gradient (the initial weights' included), with random cotangents on every output.
"""

import pytest
import torch

from megatron_ttt.kernels.ttt_linear import fused_ttt_linear
from megatron_ttt.kernels.ttt_mlp import fused_ttt_mlp
from megatron_ttt.ops import TTTInputs, TTTState, ttt_dual
from megatron_ttt.ops.inner import token_coefficients
from tests.ops.inputs import make_case, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, D, MINI_BATCH = 2, 2, 16, 4
FUSED = {"linear": fused_ttt_linear, "mlp": fused_ttt_mlp}


def _leaves(kind: str, T: int) -> list[torch.Tensor]:
    """(q, k, v, lr, token_offset, ln_weight, ln_bias, *state [B,H,...], *initial [H,...]) in float64.
    Each row's state differs from the initial weights, so a mix-up between them shows."""
    case = make_case(kind, T, MINI_BATCH, B=B, H=H, d=D, seed=T)
    g = torch.Generator().manual_seed(T + 1)
    state = [w + 0.3 * w.std() * torch.randn(B, *w.shape, generator=g, dtype=w.dtype) for w in case.weights]
    return [*case.inputs, *state, *case.weights]


def _twin_row(leaves: list[torch.Tensor], row: int, resets: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of one batch row ([1,...] each): z, the final state, the step sums of an incomplete
    last mini-batch (zeros if none), the row run segment by segment between its resets."""
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    n = len(weights) // 2
    state0, initial = tuple(w[row:row + 1] for w in weights[:n]), tuple(weights[n:])
    T = q.shape[2]
    cuts = [blk for blk in range(resets.shape[1]) if blk == 0 or resets[row, blk]]
    zs = []
    for first, end in zip(cuts, cuts[1:] + [resets.shape[1]]):
        span = slice(first * MINI_BATCH, min(end * MINI_BATCH, T))
        state = TTTState.initial(initial, 1) if resets[row, first] else TTTState(state0, None, 0)
        inputs = TTTInputs(q[row:row + 1, :, span], k[row:row + 1, :, span], v[row:row + 1, :, span],
                           lr[row:row + 1, :, span], offset, ln_w, ln_b)
        z, state = ttt_dual(inputs, state, mini_batch_size=MINI_BATCH)
        zs.append(z)
    steps = state.grads or tuple(torch.zeros_like(w) for w in state.weights)
    return [torch.cat(zs, dim=2), *state.weights, *steps]


def _twin(leaves: list[torch.Tensor], resets: torch.Tensor) -> list[torch.Tensor]:
    rows = [_twin_row(leaves, row, resets) for row in range(B)]
    return [torch.cat(parts) for parts in zip(*rows)]


def _fused(kind: str, leaves: list[torch.Tensor], resets: torch.Tensor | None, group: int) -> list[torch.Tensor]:
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    n = len(weights) // 2
    initial = tuple(weights[n:]) if resets is not None else None
    return list(FUSED[kind](q, k, v, lr, token_coefficients(offset), ln_w, ln_b, *weights[:n],
                            mini_batch_size=MINI_BATCH, time_checkpoint_group=group, resets=resets, initial=initial))


def _run(run, leaves: list[torch.Tensor], dtype: torch.dtype) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """run's outputs and the gradients of every leaf (cast to dtype) under random cotangents; zeros
    for a leaf the run does not use."""
    leaves = [x.detach().to(DEVICE, dtype).requires_grad_() for x in leaves]
    outputs = run(leaves)
    cotangents = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=cotangents, dtype=torch.float64).to(y)).sum() for y in outputs)
    return outputs, torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


# T = 14 ends 2 tokens into mini-batch 3. Row 0 restarts at mini-batch 0 (its given state unused)
# and at 2 and 3 in a row (3 is the incomplete last); row 1 in the middle only. With G = 2, a
# restart falls at a group's first mini-batch (2) and inside groups (1, 3). T = 16 (every
# mini-batch complete) without checkpointing: row 1 restarts at the last mini-batch, whose
# stepped weights are the final state.
CASES = [
    (14, 2, [[1, 0, 1, 1], [0, 1, 0, 0]]),
    (16, 0, [[0, 1, 1, 0], [1, 0, 0, 1]]),
]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T, group, pattern", CASES)
def test_resets_match_the_twin_per_segment(kind, T, group, pattern):
    leaves = _leaves(kind, T)
    resets = torch.tensor(pattern, dtype=torch.bool)
    want_out, want_grads = _run(lambda x: _twin(x, resets), leaves, torch.float64)
    got_out, got_grads = _run(lambda x: _fused(kind, x, resets.to(DEVICE), group), leaves, torch.float32)
    n = (len(leaves) - 7) // 2
    names = ["z"] + [f"state[{i}]" for i in range(n)] + [f"steps[{i}]" for i in range(n)]
    names += [f"d{name}" for name in ("q", "k", "v", "lr", "token_offset", "ln_weight", "ln_bias")]
    names += [f"dstate0[{i}]" for i in range(n)] + [f"dinitial[{i}]" for i in range(n)]
    got, want = [*got_out, *got_grads], [*want_out, *want_grads]
    assert all(torch.isfinite(x).all() for x in got), "a kernel left part of an output unwritten (NaN)"
    errors = {name: rel_err(g, w) for name, g, w in zip(names, got, want, strict=True) if w.any()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: relative RMS error {errors[worst]:.2e} > 1e-4 ({errors})"
    # Exact zeros of the twin stay exact: the steps of a complete last mini-batch, the gradient of
    # the given state of a row that restarts at mini-batch 0.
    for name, g, w in zip(names, got, want):
        assert not g[w == 0].any(), f"{name} is zero in the twin, not in the kernel"


def test_no_resets_is_bitwise_the_call_without_them():
    kind = "linear"  # one op keeps the interpreter's time down; both read the flags alike
    leaves = _leaves(kind, 14)
    never = torch.zeros(B, 4, dtype=torch.bool, device=DEVICE)
    without_out, without_grads = _run(lambda x: _fused(kind, x, None, 2), leaves, torch.float32)
    never_out, never_grads = _run(lambda x: _fused(kind, x, never, 2), leaves, torch.float32)
    for got, want in zip([*never_out, *never_grads], [*without_out, *without_grads], strict=True):
        assert torch.equal(got, want)  # the initial weights' gradient: zero in both


def test_resets_are_checked():
    q, k, v, lr, offset, ln_w, ln_b, w0, b0, w_init, b_init = (x.float() for x in _leaves("linear", 14))
    args = (q, k, v, lr, token_coefficients(offset), ln_w, ln_b, w0, b0)
    resets = torch.zeros(B, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="resets needs initial"):
        fused_ttt_linear(*args, mini_batch_size=MINI_BATCH, resets=resets)
    with pytest.raises(ValueError, match="initial is given without resets"):
        fused_ttt_linear(*args, mini_batch_size=MINI_BATCH, initial=(w_init, b_init))
    with pytest.raises(ValueError, match=r"resets must be a bool \[B, n_blocks\] = \[2, 4\]"):
        fused_ttt_linear(*args, mini_batch_size=MINI_BATCH, resets=resets[:, :3], initial=(w_init, b_init))
    with pytest.raises(ValueError, match=r"initial must be the per-head weights \[\(2, 16, 16\), \(2, 16\)\]"):
        fused_ttt_linear(*args, mini_batch_size=MINI_BATCH, resets=resets, initial=(w0, b0))
