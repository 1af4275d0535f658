import pytest
import torch

from megatron_ttt.ops import TTTState, ttt_dual, ttt_inner_loop
from tests.ops.inputs import make_case


def test_torch_and_auto_on_cpu_are_the_dual_form():
    case = make_case("linear", 21, 8, dtype=torch.float32)
    want, _ = ttt_dual(*case.args(), mini_batch_size=8)
    for backend in ("torch", "auto"):
        got, _ = ttt_inner_loop(*case.args(), mini_batch_size=8, backend=backend)
        assert torch.equal(got, want)


def test_triton_refuses_what_it_cannot_run():
    narrow = make_case("linear", 16, 8, d=8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"powers of two >= 16"):
        ttt_inner_loop(*narrow.args(), mini_batch_size=8, backend="triton")
    case = make_case("linear", 16, 8, d=16, dtype=torch.float32)
    _, mid = ttt_dual(*case.args(stop=3), mini_batch_size=8)
    with pytest.raises(ValueError, match=r"3 tokens into a mini-batch"):
        ttt_inner_loop(*case.args(mid, start=3), mini_batch_size=8, backend="triton")
    with pytest.raises(ValueError, match=r"float64"):
        ttt_inner_loop(*make_case("linear", 16, 8, d=16).args(), mini_batch_size=8, backend="triton")


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("time_checkpoint_group", [0, 1])
def test_torch_backend_returns_the_dual_forms_state(kind, time_checkpoint_group):
    """T=21 with b=8 ends 5 tokens into the third mini-batch: the state carries weights at its
    start, the gradients of the 5 tokens seen, and position 5, all exactly as ttt_dual's."""
    B, T, b = 2, 21, 8
    case = make_case(kind, T, b, B=B, dtype=torch.float32)
    want_z, want = ttt_dual(*case.args(), mini_batch_size=b, time_checkpoint_group=time_checkpoint_group)
    got_z, got = ttt_inner_loop(*case.args(), mini_batch_size=b, time_checkpoint_group=time_checkpoint_group,
                                backend="torch")
    assert isinstance(got, TTTState)
    assert torch.equal(got_z, want_z)
    assert want.position == got.position == T % b == 5
    assert want.grads is not None and got.grads is not None
    assert len(got.weights) == len(got.grads) == len(case.weights) == (2 if kind == "linear" else 4)
    for w0, w_got, w_want in zip(case.weights, got.weights, want.weights):
        assert w_got.shape == (B, *w0.shape) and torch.equal(w_got, w_want)
        assert not torch.allclose(w_got, w0.expand_as(w_got))  # two mini-batches of updates happened
    for w0, g_got, g_want in zip(case.weights, got.grads, want.grads):
        assert g_got.shape == (B, *w0.shape) and torch.equal(g_got, g_want)
        assert g_got.abs().max() > 0


def test_initial_state_is_a_view_of_the_parameters():
    B = 3
    case = make_case("mlp", 8, 8, B=B, dtype=torch.float32)
    params = tuple(w.clone().requires_grad_() for w in case.weights)
    state = TTTState.initial(params, B)
    assert state.grads is None and state.position == 0
    assert len(state.weights) == len(params) == 4
    for p, w in zip(params, state.weights):
        assert w.shape == (B, *p.shape)
        assert w.data_ptr() == p.data_ptr() and w.stride()[0] == 0  # expanded, not copied
        for i in range(B):
            assert torch.equal(w[i], p)
    # The per-sequence copies' gradients sum back into the parameter.
    g = torch.Generator().manual_seed(0)
    upstream = [torch.randn(w.shape, generator=g) for w in state.weights]
    sum((w * u).sum() for w, u in zip(state.weights, upstream)).backward()
    for p, u in zip(params, upstream):
        torch.testing.assert_close(p.grad, u.sum(0), rtol=0, atol=1e-6)
    # A view: an in-place change to the parameter shows in every sequence's weights.
    with torch.no_grad():
        params[0].add_(1.0)
    assert torch.equal(state.weights[0][B - 1], params[0].detach())


def test_unknown_backend():
    case = make_case("linear", 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        ttt_inner_loop(*case.args(), mini_batch_size=8, backend="cuda")
