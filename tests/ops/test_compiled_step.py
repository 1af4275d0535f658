"""The dual form with its mini-batch step through torch.compile: the eager dual form's outputs,
states and every gradient, and one graph per kind of mini-batch, reused for other calls,
sequence lengths and layers."""

import pytest
import torch
from torch._dynamo.utils import counters

from megatron_ttt.ops import ttt_dual, ttt_inner_loop
from tests.ops.inputs import make_case, rel_err, scalar_loss


def _run(case, compiled: bool, state=None, start: int = 0, stop: int | None = None):
    """z, the final state, and the gradient of every leaf of a scalar of both."""
    z, final = ttt_dual(*case.args(state, start, stop), mini_batch_size=case.mini_batch_size,
                        backend="compile" if compiled else "torch")
    return z, final, torch.autograd.grad(scalar_loss(z, final), case.leaves())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_compiled_step_equals_the_eager_step_and_compiles_once_per_kind(kind):
    torch._dynamo.reset()
    counters.clear()
    case = make_case(kind, 34, 8).requires_grad_()  # float64; 21 tokens, then 13 from inside a mini-batch
    for stop, start_state in ((21, None), (34, "mid")):
        results = {}
        for compiled in (False, True):
            state = None
            if start_state:
                state = ttt_dual(*case.args(stop=21), mini_batch_size=8, backend="compile" if compiled else "torch")[1]
            results[compiled] = _run(case, compiled, state, 21 if start_state else 0, stop)
        (z, final, grads), (cz, cfinal, cgrads) = results[False], results[True]
        assert final.position == cfinal.position == stop % 8
        errors = {"z": rel_err(cz, z)} | {f"state weight {i}": rel_err(c, e)
                                          for i, (c, e) in enumerate(zip(cfinal.weights, final.weights))}
        errors |= {f"state grad {i}": rel_err(c, e) for i, (c, e) in enumerate(zip(cfinal.grads, final.grads))}
        errors |= {f"d/d leaf {i}": rel_err(c, e) for i, (c, e) in enumerate(zip(cgrads, grads))}
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 1e-10, f"from {start_state or 'the start'}: {worst} off by {errors[worst]:.1e}"
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 4, f"{graphs} graphs for (complete or not) x (carried gradients or not)"
    other_layer = make_case(kind, 45, 8, seed=1).requires_grad_()  # another length, other weights
    _run(other_layer, True)
    z, _ = ttt_inner_loop(*other_layer.args(stop=29), mini_batch_size=8, backend="compile")
    assert counters["stats"]["unique_graphs"] == graphs, "the compiled step was compiled again"
    assert counters["graph_break"] == {}, "the step was split by a graph break"
