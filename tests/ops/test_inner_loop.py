"""The dual form, the decode step and time-axis checkpointing against the primal twin."""

import pytest
import torch

from megatron_ttt.ops import TTTInputs, TTTState, ttt_decode_step, ttt_dual, ttt_primal
from tests.ops.inputs import make_case, rel_err, scalar_loss

KINDS = ["linear", "mlp"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_states_close(actual: TTTState, expected: TTTState, tol: float) -> None:
    assert actual.position == expected.position
    assert (actual.grads is None) == (expected.grads is None)
    pairs = list(zip(actual.weights, expected.weights)) + list(zip(actual.grads or (), expected.grads or ()))
    for index, (a, e) in enumerate(pairs):
        assert rel_err(a, e) <= tol, f"state tensor {index}: rel. error {rel_err(a, e):.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("b", [1, 4, 16])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 63, 200])
@pytest.mark.parametrize("kind", KINDS)
def test_dual_equals_primal(kind, T, b, dtype):
    case = make_case(kind, T, b, dtype=dtype)
    z_dual, s_dual = ttt_dual(*case.args(), mini_batch_size=b)
    z_primal, s_primal = ttt_primal(*case.args(), mini_batch_size=b)
    assert rel_err(z_dual, z_primal) <= TOL[dtype]
    assert_states_close(s_dual, s_primal, TOL[dtype])
    assert s_dual.position == T % b


def _grads(fn, case, **kwargs):
    z, state = fn(*case.args(), mini_batch_size=case.mini_batch_size, **kwargs)
    return torch.autograd.grad(scalar_loss(z, state), case.leaves())


NAMES = ["q", "k", "v", "lr", "token_offset", "ln_weight", "ln_bias", "W1", "b1", "W2", "b2"]


@pytest.mark.parametrize("T,b", [(17, 4), (63, 16), (40, 1)])
@pytest.mark.parametrize("kind", KINDS)
def test_every_gradient_dual_equals_primal(kind, T, b):
    case = make_case(kind, T, b).requires_grad_()
    for name, g_dual, g_primal in zip(NAMES, _grads(ttt_dual, case), _grads(ttt_primal, case)):
        assert rel_err(g_dual, g_primal) <= 1e-10, f"d/d{name}: rel. error {rel_err(g_dual, g_primal):.2e}"
        assert g_primal.abs().sum() > 0, f"d/d{name} is zero: the test would not see an error"


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_dual(kind):
    case = make_case(kind, T=6, b=4, B=1, H=2, d=4).requires_grad_()

    def fn(*leaves):
        q, k, v, lr, off, ln_w, ln_b, *weights = leaves
        z, state = ttt_dual(TTTInputs(q, k, v, lr, off, ln_w, ln_b), TTTState.initial(tuple(weights), 1),
                            mini_batch_size=4)
        return (z, *state.weights, *state.grads)

    assert torch.autograd.gradcheck(fn, case.leaves(), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_checkpointing_is_bitwise_identical(kind, group):
    case = make_case(kind, T=63, b=4).requires_grad_()
    z_ref, s_ref = ttt_dual(*case.args(), mini_batch_size=4)
    z_ckpt, s_ckpt = ttt_dual(*case.args(), mini_batch_size=4, time_checkpoint_group=group)
    assert torch.equal(z_ckpt, z_ref)
    for a, e in zip(s_ckpt.weights + s_ckpt.grads, s_ref.weights + s_ref.grads):
        assert torch.equal(a, e)
    for name, g_ckpt, g_ref in zip(NAMES, _grads(ttt_dual, case, time_checkpoint_group=group), _grads(ttt_dual, case)):
        assert torch.equal(g_ckpt, g_ref), f"d/d{name} differs with time_checkpoint_group={group}"


@pytest.mark.parametrize("split", [1, 5, 16, 33, 62])
@pytest.mark.parametrize("kind", KINDS)
def test_two_pieces_equal_one(kind, split):
    T, b = 63, 16
    case = make_case(kind, T, b).requires_grad_()
    z_one, s_one = ttt_dual(*case.args(), mini_batch_size=b)
    z_a, s_a = ttt_dual(*case.args(stop=split), mini_batch_size=b)
    z_b, s_b = ttt_dual(*case.args(state=s_a, start=split), mini_batch_size=b)
    z_two = torch.cat([z_a, z_b], dim=2)
    assert rel_err(z_two, z_one) <= 1e-12
    assert_states_close(s_b, s_one, 1e-12)
    g_one = torch.autograd.grad(scalar_loss(z_one, s_one), case.leaves())
    g_two = torch.autograd.grad(scalar_loss(z_two, s_b), case.leaves())
    for name, a, e in zip(NAMES, g_two, g_one):
        assert rel_err(a, e) <= 1e-12, f"d/d{name}: rel. error {rel_err(a, e):.2e}"


def _decode(case, state, start, stop):
    outputs = []
    for t in range(start, stop):
        z, state = ttt_decode_step(*case.args(state=state, start=t, stop=t + 1), mini_batch_size=case.mini_batch_size)
        outputs.append(z)
    return torch.cat(outputs, dim=2), state


@pytest.mark.parametrize("b", [4, 16])
@pytest.mark.parametrize("T", [1, 17, 40])
@pytest.mark.parametrize("kind", KINDS)
def test_decode_equals_prefill(kind, T, b):
    case = make_case(kind, T, b)
    z_prefill, s_prefill = ttt_dual(*case.args(), mini_batch_size=b)
    z_decode, s_decode = _decode(case, None, 0, T)
    assert rel_err(z_decode, z_prefill) <= 1e-12
    assert_states_close(s_decode, s_prefill, 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_continues_a_prefill(kind):
    T, prefix, b = 40, 21, 16
    case = make_case(kind, T, b)
    z_full, s_full = ttt_dual(*case.args(), mini_batch_size=b)
    z_prefix, s_prefix = ttt_dual(*case.args(stop=prefix), mini_batch_size=b)
    z_rest, s_rest = _decode(case, s_prefix, prefix, T)
    assert rel_err(torch.cat([z_prefix, z_rest], dim=2), z_full) <= 1e-12
    assert_states_close(s_rest, s_full, 1e-12)


def test_bad_inputs_are_named():
    case = make_case("linear", T=8, b=4)
    inputs, state = case.args()
    with pytest.raises(ValueError, match="^k has shape"):
        ttt_dual(inputs._replace(k=inputs.k[:, :, :5]), state, mini_batch_size=4)
    with pytest.raises(ValueError, match="^lr must be"):
        ttt_dual(inputs._replace(lr=inputs.lr[..., :5]), state, mini_batch_size=4)
    with pytest.raises(ValueError, match="^token_offset must be"):
        ttt_dual(inputs, state, mini_batch_size=8)
    with pytest.raises(ValueError, match="^state layer 0"):
        ttt_dual(inputs, TTTState.initial(case.weights, 3), mini_batch_size=4)
    with pytest.raises(ValueError, match="^time_checkpoint_group"):
        ttt_dual(inputs, state, mini_batch_size=4, time_checkpoint_group=-1)
    with pytest.raises(ValueError, match="^backend must be one of"):
        ttt_dual(inputs, state, mini_batch_size=4, backend="triton")
    with pytest.raises(ValueError, match="takes one token"):
        ttt_decode_step(inputs, state, mini_batch_size=4)
