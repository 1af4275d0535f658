import warnings

import pytest
import torch

from megatron_ttt import run_options
from megatron_ttt.ops import TTTState, ttt_dual, ttt_inner_loop, ttt_primal
from tests.ops.inputs import make_case, rel_err


def _graph_nodes(z: torch.Tensor) -> set[str]:
    """The names of the nodes of z's autograd graph."""
    names, seen, todo = set(), set(), [z.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            names.add(node.name())
            todo.extend(child for child, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_cpu_backends_equal_the_primal_twin(kind):
    """Every backend that runs on CPU tensors (TTT-MLP has no written-out backward) against the
    independent twin; "auto" is the forced "torch" to the bit."""
    case = make_case(kind, 21, 8)
    want, want_state = ttt_primal(*case.args(), mini_batch_size=8)
    backends = ("auto", "torch", "manual") if kind == "linear" else ("auto", "torch")
    got = {backend: ttt_inner_loop(*case.args(), mini_batch_size=8, backend=backend) for backend in backends}
    for backend, (z, state) in got.items():
        assert rel_err(z, want) <= 1e-10, backend
        for a, e in zip((*state.weights, *state.grads), (*want_state.weights, *want_state.grads), strict=True):
            assert rel_err(a, e) <= 1e-10, backend
    assert torch.equal(got["auto"][0], got["torch"][0])


def test_manual_runs_ttt_linear_through_the_written_out_backward():
    case = make_case("linear", 21, 8).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing
        manual, _ = ttt_inner_loop(*case.args(), mini_batch_size=8, backend="manual")
    autograd, _ = ttt_inner_loop(*case.args(), mini_batch_size=8, backend="torch")
    assert "_LinearScanBackward" in _graph_nodes(manual)
    assert "_LinearScanBackward" not in _graph_nodes(autograd)


def test_manual_on_ttt_mlp_warns_once_and_runs_the_autograd_step(monkeypatch):
    monkeypatch.setattr(run_options, "_warned", set())
    case = make_case("mlp", 21, 8).requires_grad_()
    want, _ = ttt_inner_loop(*case.args(), mini_batch_size=8, backend="torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-location filter off: the op says it once
        for _ in range(3):  # three layers, or three steps
            got, _ = ttt_inner_loop(*case.args(), mini_batch_size=8, backend="manual")
    assert [str(w.message) for w in caught] == [
        "backend 'manual' has no written-out backward for TTT-MLP; using the autograd dual form"]
    assert torch.equal(got, want)
    assert "_LinearScanBackward" not in _graph_nodes(got)


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
def test_torch_backend_returns_the_twins_state(kind, time_checkpoint_group):
    """T=21 with b=8 ends 5 tokens into the third mini-batch: the state carries weights at its
    start, the gradients of the 5 tokens seen, and position 5, all as the primal twin's."""
    B, T, b = 2, 21, 8
    case = make_case(kind, T, b, B=B)
    want_z, want = ttt_primal(*case.args(), mini_batch_size=b)
    got_z, got = ttt_inner_loop(*case.args(), mini_batch_size=b, time_checkpoint_group=time_checkpoint_group,
                                backend="torch")
    assert isinstance(got, TTTState)
    assert rel_err(got_z, want_z) <= 1e-10
    assert want.position == got.position == T % b == 5
    assert want.grads is not None and got.grads is not None
    assert len(got.weights) == len(got.grads) == len(case.weights) == (2 if kind == "linear" else 4)
    for w0, w_got, w_want in zip(case.weights, got.weights, want.weights):
        assert w_got.shape == (B, *w0.shape) and rel_err(w_got, w_want) <= 1e-10
        assert not torch.allclose(w_got, w0.expand_as(w_got))  # two mini-batches of updates happened
    for w0, g_got, g_want in zip(case.weights, got.grads, want.grads):
        assert g_got.shape == (B, *w0.shape) and rel_err(g_got, g_want) <= 1e-10
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


@pytest.mark.parametrize("rows", [1, 2])
def test_triton_documents_keep_or_drop_the_final_state(rows):
    """Packed documents through the kernels equal the dual form; the state after the call is the
    kernels' where every sequence ends at the same position (one row), the dual form's otherwise,
    and None when the caller drops it."""
    from megatron_ttt.ops import DocumentStarts

    case = make_case("linear", 22, 4, B=rows, H=2, d=16, dtype=torch.float32)
    starts = torch.zeros(rows, 22, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, [6, 7]] = True
    documents = DocumentStarts(starts, case.weights)
    want, want_state = ttt_dual(*case.args(), mini_batch_size=4, documents=documents)
    got, state = ttt_inner_loop(*case.args(), mini_batch_size=4, backend="triton", documents=documents)
    assert rel_err(got, want) < 1e-5
    assert torch.equal(state.position, want_state.position)
    for a, e in zip(state.weights + state.grads, want_state.weights + want_state.grads):
        assert rel_err(a, e) < 1e-5
    dropped, none = ttt_inner_loop(*case.args(), mini_batch_size=4, backend="triton", documents=documents,
                                   final_state=False)
    assert none is None and rel_err(dropped, want) < 1e-5
