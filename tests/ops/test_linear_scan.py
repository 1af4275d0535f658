"""TTT-Linear's mini-batches with their backward written out (ops/linear_scan.py) against the
autograd step: outputs, states and every gradient, from the start and from a state inside a
mini-batch, with time-axis checkpointing, in float64 and float32; and gradcheck of the scan."""

import pytest
import torch

from megatron_ttt.ops import ttt_dual
from megatron_ttt.ops.linear_scan import _LinearScan
from tests.ops.inputs import make_case, rel_err, scalar_loss

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _run(case, backend: str, stop: int, start_state: bool, group: int):
    """z, the final state and the gradient of every leaf of a scalar of both, for tokens [0, stop)
    in one call, or [0, 13) and then the rest from the state inside a mini-batch."""
    state, start = None, 0
    if start_state:
        state, start = ttt_dual(*case.args(stop=13), mini_batch_size=case.mini_batch_size, backend=backend)[1], 13
    z, final = ttt_dual(*case.args(state, start, stop), mini_batch_size=case.mini_batch_size, backend=backend,
                        time_checkpoint_group=group)
    return z, final, torch.autograd.grad(scalar_loss(z, final), case.leaves())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stop,start_state,group", [(37, False, 0), (40, False, 2), (37, True, 0)],
                         ids=["T37", "T40-ckpt2", "mid-state"])
def test_manual_backend_equals_the_autograd_step(dtype, stop, start_state, group):
    case = make_case("linear", 40, 8, d=16, dtype=dtype).requires_grad_()
    (z, final, grads), (mz, mfinal, mgrads) = (_run(case, backend, stop, start_state, group)
                                               for backend in ("torch", "manual"))
    assert mfinal.position == final.position == stop % 8
    errors = {"z": rel_err(mz, z)}
    errors |= {f"state {i}": rel_err(m, e) for i, (m, e) in
               enumerate(zip((*mfinal.weights, *(mfinal.grads or ())), (*final.weights, *(final.grads or ()))))}
    errors |= {f"d/d leaf {i}": rel_err(m, e) for i, (m, e) in enumerate(zip(mgrads, grads, strict=True))}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{worst} off by {errors[worst]:.1e}"


@pytest.mark.parametrize("carried,last_complete", [(False, True), (True, False)], ids=["whole", "carried-partial"])
def test_gradcheck(carried, last_complete):
    """Three mini-batches: every input's gradient against finite differences."""
    g = torch.Generator().manual_seed(3)
    N, n, L, d = 2, 3, 4, 4
    rand = lambda *shape, std=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * std).requires_grad_()  # noqa: E731
    lr = (torch.rand(N, n, L, generator=g, dtype=torch.float64) / d).requires_grad_()
    acc = (rand(N, d, d, std=0.1), rand(N, d, std=0.1)) if carried else (None, None)
    inputs = (rand(N, d, d, std=0.5), rand(N, d, std=0.1), *acc, rand(N, n, L, d), rand(N, n, L, d),
              rand(N, n, L, d), lr, rand(N, n, L, L, std=0.1), torch.tensor(0.3, dtype=torch.float64,
                                                                               requires_grad=True),
              1 + rand(N, 1, d, std=0.1), rand(N, 1, d, std=0.1), last_complete, True)
    assert torch.autograd.gradcheck(_LinearScan.apply, inputs)
