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


def test_unknown_backend():
    case = make_case("linear", 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        ttt_inner_loop(*case.args(), mini_batch_size=8, backend="cuda")
    assert isinstance(TTTState.initial(case.weights, 2), TTTState)
