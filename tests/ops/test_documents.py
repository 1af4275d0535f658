"""Packed documents in the inner loop: the dual form (every backend, time-axis checkpointing), the
decode step and a continued call against the primal twin, which runs each document alone."""

import pytest
import torch

from megatron_ttt.ops import DocumentStarts, TTTState, ttt_decode_step, ttt_dual, ttt_primal
from megatron_ttt.ops.documents import document_layout
from tests.ops.inputs import make_case, rel_err, scalar_loss

T, B = 23, 2
B_MINI = 4


def starts() -> torch.Tensor:
    """Row 0: documents at 0, 3 (inside a mini-batch), 4 (two in a row), 8 (on an edge) and 15;
    row 1: at 0 and 13, ending 2 tokens into a mini-batch of its own."""
    s = torch.zeros(B, T, dtype=torch.bool)
    s[0, [0, 3, 4, 8, 15]] = True
    s[1, [0, 13]] = True
    return s


def case_and_documents(kind: str, begin_fresh: bool = True):
    case = make_case(kind, T, B_MINI, B=B).requires_grad_()
    where = starts()
    where[:, 0] = begin_fresh
    initial = tuple(w.detach().clone().requires_grad_() for w in case.weights)
    return case, DocumentStarts(where, initial)


def outputs_and_grads(fn, case, documents, **kwargs):
    z, state = fn(*case.args(), mini_batch_size=B_MINI, documents=documents, **kwargs)
    grads = torch.autograd.grad(scalar_loss(z, state), [*case.leaves(), *documents.initial], allow_unused=True)
    return z, state, grads


CASES = [(kind, backend, group, fresh) for kind in ("linear", "mlp") for backend, group in
         (("torch", 0), ("torch", 2), ("manual", 0), ("manual", 3)) for fresh in (True, False)]
CASES += [("linear", "compile", 0, True)]


@pytest.mark.parametrize("kind, backend, group, begin_fresh", CASES)
def test_dual_equals_each_document_alone(kind, backend, group, begin_fresh):
    """begin_fresh False: token 0 continues the given state (a document from an earlier call)."""
    case, documents = case_and_documents(kind, begin_fresh)
    z, state, grads = outputs_and_grads(ttt_dual, case, documents, backend=backend, time_checkpoint_group=group)
    z_ref, state_ref, grads_ref = outputs_and_grads(ttt_primal, case, documents)
    assert rel_err(z, z_ref) < 1e-10
    assert torch.equal(state.position, state_ref.position) and state.position.tolist() == [0, 2]
    for a, e in zip(state.weights + state.grads, state_ref.weights + state_ref.grads):
        assert rel_err(a, e) < 1e-10
    for index, (a, e) in enumerate(zip(grads, grads_ref)):
        if e is None:
            assert a is None or not a.any()
            continue
        assert rel_err(a, e) < 1e-10, f"gradient {index}"
    if begin_fresh:
        assert not grads[-len(documents.initial) - 1].any(), "the given state is replaced at token 0"


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_call_continues_a_per_sequence_state(kind):
    """Two calls (the first ending at different positions per sequence) equal one, and so do
    single-token decode steps."""
    case, documents = case_and_documents(kind)
    with torch.no_grad():
        z, state = ttt_dual(*case.args(), mini_batch_size=B_MINI, documents=documents)
        cut = 6
        z_a, state_a = ttt_dual(*case.args(stop=cut), mini_batch_size=B_MINI,
                                documents=documents._replace(starts=documents.starts[:, :cut]))
        z_b, state_b = ttt_dual(*case.args(state_a, start=cut), mini_batch_size=B_MINI,
                                documents=documents._replace(starts=documents.starts[:, cut:]))
        assert rel_err(torch.cat((z_a, z_b), dim=2), z) < 1e-12
        assert state_a.position.tolist() == [2, 2]
        decoded, step_state = [], TTTState.initial(case.weights, B)
        for t in range(T):
            z_t, step_state = ttt_decode_step(*case.args(step_state, start=t, stop=t + 1), mini_batch_size=B_MINI,
                                              documents=documents._replace(starts=documents.starts[:, t:t + 1]))
            decoded.append(z_t)
    assert rel_err(torch.cat(decoded, dim=2), z) < 1e-12
    for a, e in zip(step_state.weights + step_state.grads, state_b.weights + state_b.grads):
        assert rel_err(a, e) < 1e-12
    assert step_state.position.tolist() == state.position.tolist()


def test_the_layout_starts_every_document_on_a_mini_batch():
    layout = document_layout(starts(), torch.tensor([0, 1]), B_MINI)
    firsts = layout.index[starts()]
    assert (firsts[1:] % B_MINI == 0).all() or firsts.tolist()
    assert layout.index[0].tolist()[:10] == [0, 1, 2, 4, 8, 9, 10, 11, 12, 13]
    assert layout.index[1, 0] == 4, "a sequence 1 token into a mini-batch starts its document on the next"
    assert layout.resets.sum(dim=1).tolist() == [5, 2]
    assert layout.position.tolist() == [(layout.ends[0] % B_MINI).item(), 2]


def test_bad_document_starts_are_named():
    case, documents = case_and_documents("linear")
    with pytest.raises(ValueError, match=r"documents.starts must be a bool \[B,T\] = \(2, 23\)"):
        ttt_dual(*case.args(), mini_batch_size=B_MINI, documents=documents._replace(starts=documents.starts[:, :5]))
    with pytest.raises(ValueError, match="documents.initial must be the per-head weights"):
        ttt_dual(*case.args(), mini_batch_size=B_MINI, documents=documents._replace(initial=case.weights[:1]))
