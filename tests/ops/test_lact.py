"""LaCT's SwiGLU fast weights: the fast op against its float64 twin (outputs, final weights, every
input's gradient), at odd sizes, with and without momentum, Muon, packed documents and time-axis
checkpointing."""

import math

import pytest
import torch

from megatron_ttt.ops.lact import lact_swiglu, lact_swiglu_with_weights, newton_schulz5
from megatron_ttt.ops.lact_reference import lact_swiglu_reference
from tests.ops.inputs import rel_err

N, D_IN, HIDDEN, D_OUT = 3, 5, 7, 6
NAMES = ("w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2", "momentum")


def make_leaves(T: int, dtype=torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs at a layer's scales: weights ~ N(0, 1/fan_in), L2-normalised keys (as LaCT's layer
    feeds them), learning rates softplus(.) around 0.3 so that every step moves the weights."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    k = randn(N, T, D_IN)
    leaves = {
        "w0": randn(N, HIDDEN, D_IN) / math.sqrt(D_IN),
        "w1": randn(N, D_OUT, HIDDEN) / math.sqrt(HIDDEN),
        "w2": randn(N, HIDDEN, D_IN) / math.sqrt(D_IN),
        "q": randn(N, T, D_IN),
        "k": k / k.norm(dim=-1, keepdim=True),
        "v": randn(N, T, D_OUT),
        **{name: torch.nn.functional.softplus(randn(N, T, 1) - 1) for name in ("lr0", "lr1", "lr2")},
        "momentum": torch.sigmoid(randn(N, T, 1)),
    }
    return {name: x.to(dtype).requires_grad_() for name, x in leaves.items()}


def run(fn, leaves, chunk, use_muon, with_momentum, **options):
    """Outputs, final weights and the gradients of a random functional of both."""
    args = [leaves[name] for name in NAMES[:-1]]
    momentum = leaves["momentum"] if with_momentum else None
    o, weights = fn(*args, chunk, use_muon, momentum, **options)
    g = torch.Generator().manual_seed(1)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)).sum() for x in (o, *weights))
    used = [leaves[name] for name in NAMES if with_momentum or name != "momentum"]
    grads = torch.autograd.grad(loss, used, allow_unused=True)
    # Unused (a chunk as long as the sequence never steps): a zero gradient, on both sides.
    return o, weights, [torch.zeros_like(x) if g is None else g for x, g in zip(used, grads)]


def assert_close(fast, twin, tol):
    (o, weights, grads), (o_ref, weights_ref, grads_ref) = fast, twin
    assert rel_err(o, o_ref) < tol, "output"
    for name, w, w_ref in zip(("w0", "w1", "w2"), weights, weights_ref):
        assert rel_err(w, w_ref) < tol, f"final {name}"
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert rel_err(g, g_ref) < tol or g.abs().max() == g_ref.abs().max() == 0, f"gradient of {name}"


CASES = [(T, chunk, muon, momentum) for T, chunk in ((13, 4), (9, 9), (10, 3)) for muon in (False, True)
         for momentum in (False, True)]


@pytest.mark.parametrize("T,chunk,use_muon,with_momentum", CASES)
def test_matches_twin(T, chunk, use_muon, with_momentum):
    leaves = make_leaves(T)
    twin = run(lact_swiglu_reference, leaves, chunk, use_muon, with_momentum)
    fast = run(lact_swiglu_with_weights, leaves, chunk, use_muon, with_momentum)
    assert_close(fast, twin, 1e-10)


def test_steps_move_the_weights():
    """The cases above compare something: each step changes the weights by a sizeable fraction."""
    leaves = make_leaves(13)
    args = [leaves[name] for name in NAMES[:-1]]
    _, weights = lact_swiglu_with_weights(*args, 4, True, leaves["momentum"])
    for w, w0 in zip(weights, args[:3]):
        assert rel_err(w, w0) > 0.1


def test_float32_matches_twin():
    leaves = make_leaves(13)
    twin = run(lact_swiglu_reference, leaves, 4, True, True)
    fast = run(lact_swiglu_with_weights, make_leaves(13, torch.float32), 4, True, True)
    assert_close(fast, twin, 1e-4)


def test_chunk_of_whole_sequence_applies_the_initial_weights():
    leaves = make_leaves(8)
    args = [leaves[name] for name in NAMES[:-1]]
    w0, w1, w2 = args[:3]
    q = args[3]
    expected = (torch.nn.functional.silu(q @ w0.mT) * (q @ w2.mT)) @ w1.mT
    assert rel_err(lact_swiglu(*args, chunk_size=8), expected) < 1e-14


def document_starts(T: int) -> torch.Tensor:
    """Row 0: documents at 3 (inside a chunk), 4 (one token long before it), 8 (on a chunk edge), 17;
    row 1: one document; row 2: at 1 and 14 (ending mid-chunk)."""
    starts = torch.zeros(N, T, dtype=torch.bool)
    starts[0, [3, 4, 8, 17]] = True
    starts[2, [1, 14]] = True
    return starts


@pytest.mark.parametrize("use_muon,with_momentum,group", [(False, False, 0), (True, True, 0), (False, True, 2)])
def test_documents_match_twin(use_muon, with_momentum, group):
    T, chunk = 21, 4
    leaves, starts = make_leaves(T), document_starts(T)
    twin = run(lact_swiglu_reference, leaves, chunk, use_muon, with_momentum, starts=starts)
    fast = run(lact_swiglu_with_weights, leaves, chunk, use_muon, with_momentum, starts=starts,
               time_checkpoint_group=group)
    assert_close(fast, twin, 1e-10)


def test_document_runs_as_alone():
    """A packed document's outputs equal the op on that document alone (the twin's definition,
    checked here against the fast op without documents)."""
    T, chunk = 21, 4
    leaves = make_leaves(T)
    args = [leaves[name].detach() for name in NAMES]
    packed = lact_swiglu(*args[:9], chunk, True, args[9], starts=document_starts(T))
    alone = lact_swiglu(*(x[:1] for x in args[:3]), *(x[:1, 8:17] for x in args[3:9]), chunk, True,
                        args[9][:1, 8:17])
    assert rel_err(packed[:1, 8:17], alone) < 1e-14


@pytest.mark.parametrize("group", [1, 2])
def test_time_checkpointing_is_bitwise(group):
    T, chunk = 13, 3
    leaves = make_leaves(T, torch.float32)
    stored = run(lact_swiglu_with_weights, leaves, chunk, True, True)
    again = run(lact_swiglu_with_weights, leaves, chunk, True, True, time_checkpoint_group=group)
    for a, b in zip([stored[0], *stored[1], *stored[2]], [again[0], *again[1], *again[2]]):
        assert torch.equal(a, b)


def test_newton_schulz_orthogonalises():
    """Five iterations leave the singular values in LaCT's band around 1 (about 0.7 to 1.2), on both
    orientations."""
    g = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for x in (g, g.mT):
        singular = torch.linalg.svdvals(newton_schulz5(x))
        assert singular.min() > 0.6 and singular.max() < 1.25


def test_bad_shapes_are_named():
    leaves = make_leaves(5)
    args = [leaves[name] for name in NAMES[:-1]]
    args[5] = args[5][..., :-1]
    with pytest.raises(ValueError, match="v must be"):
        lact_swiglu(*args, chunk_size=2)
