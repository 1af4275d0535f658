"""The fused Triton kernels against their twin, the PyTorch dual form in float64.

On CPU the kernels run in Triton's interpreter (tests/kernels/conftest.py), so sizes stay small.
Errors are relative RMS errors (||kernel - twin|| / ||twin||) of the output, the final state and
every gradient, with random cotangents on the output and on the final state.
"""

import pytest
import torch

from megatron_ttt.ops import TTTInputs, TTTState, ttt_dual, ttt_inner_loop
from tests.ops.inputs import make_case, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_NAMES = ["q", "k", "v", "lr", "token_offset", "ln_weight", "ln_bias"]


def _outputs(z: torch.Tensor, state: TTTState) -> list[torch.Tensor]:
    return [z, *state.weights, *(state.grads or ())]


def _run(case, backend: str, dtype: torch.dtype, time_checkpoint_group: int):
    """Outputs and gradients of the inner loop with the case's leaves cast to dtype."""
    leaves = [x.detach().to(DEVICE, dtype).requires_grad_() for x in case.leaves()]
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    state = TTTState.initial(tuple(weights), q.shape[0])
    run = ttt_dual if backend == "twin" else ttt_inner_loop
    kwargs = {} if backend == "twin" else {"backend": backend}
    z, state = run(TTTInputs(q, k, v, lr, offset, ln_w, ln_b), state, mini_batch_size=case.mini_batch_size,
                   time_checkpoint_group=time_checkpoint_group, **kwargs)
    outputs = _outputs(z, state)
    cotangents = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=cotangents, dtype=torch.float64).to(y)).sum() for y in outputs)
    return outputs, torch.autograd.grad(loss, leaves)


def _errors(case, dtype: torch.dtype, time_checkpoint_group: int) -> dict[str, float]:
    want_out, want_grads = _run(case, "twin", torch.float64, 0)
    got_out, got_grads = _run(case, "triton", dtype, time_checkpoint_group)
    assert len(got_out) == len(want_out)
    names = ["z"] + [f"state[{i}]" for i in range(len(got_out) - 1)]
    names += [f"d{n}" for n in GRAD_NAMES] + [f"dW0[{i}]" for i in range(len(case.weights))]
    values = [*got_out, *got_grads]
    assert all(torch.isfinite(x).all() for x in values), "a kernel left part of an output unwritten (NaN)"
    return {n: rel_err(g.cpu(), w) for n, g, w in zip(names, values, [*want_out, *want_grads])}


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("b", [8, 16])
# The long sequence (many mini-batches, time-checkpoint groups ending mid-way) at the narrow
# head only: the interpreter's time grows with d, and the wide head is covered at 16 and 63.
@pytest.mark.parametrize("T, d", [(16, 16), (16, 64), (63, 16), (63, 64), pytest.param(200, 16, marks=pytest.mark.slow)])
def test_fp32_matches_twin(kind, T, b, d):
    case = make_case(kind, T, b, B=1, H=2, d=d, dtype=torch.float64, seed=T + b + d)
    errors = _errors(case, torch.float32, time_checkpoint_group=0 if T == 16 else {8: 1, 16: 4}[b])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: relative RMS error {errors[worst]:.2e} > 1e-4 ({errors})"


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_bf16_inputs_match_twin(kind):
    # The twin sees the same bf16-rounded inputs in float64; the kernel keeps its state and
    # arithmetic in fp32, so what remains is the bf16 rounding of the outputs and gradients.
    case = make_case(kind, 40, 16, B=1, H=2, d=16, dtype=torch.bfloat16, seed=7)
    errors = _errors(case, torch.bfloat16, time_checkpoint_group=2)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-2, f"{worst}: relative RMS error {errors[worst]:.2e} > 1e-2 ({errors})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 exists only on CUDA GPUs")
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_fp32_inputs_stay_fp32_when_torch_allows_tf32(kind, monkeypatch):
    """torch's TF32 switch rounds a GPU's fp32 matmuls in PyTorch (the twin's), never the kernels':
    fp32 inputs take input_precision="ieee", so their errors stay at fp32 rounding."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    case = make_case(kind, 63, 16, B=1, H=2, d=64, dtype=torch.float64, seed=11)
    errors = _errors(case, torch.float32, time_checkpoint_group=4)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: relative RMS error {errors[worst]:.2e} > 1e-4 under TF32 ({errors})"


@pytest.mark.parametrize("kind, group", [("linear", 1), ("linear", 2), ("linear", 5), ("mlp", 1), ("mlp", 4)])
def test_checkpoint_group_does_not_change_results(kind, group):
    case = make_case(kind, 63, 8, B=1, H=2, d=16, dtype=torch.float32, seed=3)
    base_out, base_grads = _run(case, "triton", torch.float32, 0)
    out, grads = _run(case, "triton", torch.float32, group)
    for got, want in zip([*out, *grads], [*base_out, *base_grads]):
        assert torch.equal(got, want)


def test_kernel_state_continues_in_the_twin():
    """A kernel run ending inside a mini-batch returns a state the twin can finish."""
    case = make_case("mlp", 45, 16, B=1, H=2, d=16, dtype=torch.float32, seed=5)
    z_full, state_full = ttt_dual(*case.args(), mini_batch_size=16)
    z1, state = ttt_inner_loop(*case.args(stop=21), mini_batch_size=16, backend="triton")
    assert state.position == 5 and state.grads is not None
    z2, state = ttt_dual(*case.args(state, start=21), mini_batch_size=16)
    assert rel_err(torch.cat([z1, z2], dim=2), z_full) <= 1e-5
    for got, want in zip(state.weights, state_full.weights):
        assert rel_err(got, want) <= 1e-5
