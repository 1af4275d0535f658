"""Muon: the Newton-Schulz iteration against its spectral twin, which parameters it takes, and
real runs: TP 2 with ZeRO 3 equals TP 1 with ZeRO 0 (and differs from AdamW by far more), the
loss falls, and a resumed run equals the uninterrupted one bitwise."""

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.planning.memory import hidden_matrix_parameters
from megatron_ttt.training.checkpointing import ResumeError, check_same_optimizer
from megatron_ttt.training.engine import parameter_groups
from megatron_ttt.training.muon import NS_COEFFICIENTS, NS_STEPS, newton_schulz
from tests.training.runs import EVERY_STEP, cut_at, final_weights, losses, max_weight_difference, pretrain

MUON = EVERY_STEP + ["optimizer.name=muon", "optimizer.grad_clip=0.5"]
"""The gradient norm is about 0.7: clipped at every step."""
TOLERANCE = 1e-5
"""Relative on the losses, absolute on the weights (of order 0.02 to 1): TP and DP add float32
partial sums in other orders."""


def spectral_twin(matrix: torch.Tensor) -> torch.Tensor:
    """What the iteration computes, by its definition: the quintic applied NS_STEPS times to each
    singular value of the Frobenius-normalised matrix, the singular vectors kept (float64 SVD)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    s = s / (matrix.double().norm() + 1e-7)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        s = a * s + b * s ** 3 + c * s ** 5
    return u @ torch.diag(s) @ vh


@pytest.mark.parametrize("shape", [(37, 11), (11, 37), (24, 24)])
def test_newton_schulz_equals_its_spectral_twin(shape):
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    fast, twin = newton_schulz(matrix).double(), spectral_twin(matrix)
    assert (fast - twin).norm() / twin.norm() < 1e-5
    singular = torch.linalg.svdvals(fast)
    # About orthogonal: five steps leave only the few smallest singular values (of a random
    # square matrix) below the band.
    assert singular.median() > 0.6 and singular.max() < 1.3


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(groups):
    model = build_model(TTTModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=48, mini_batch_size=4), groups)
    names = {id(p): n for n, p in model.named_parameters()}
    orthogonalised, decayed, plain = ({names[id(p)] for p in g["params"]} for g in parameter_groups(model, 0.1, True))
    assert orthogonalised == {rule.ours for rule in rules(model.ttt) if rule.hidden_matrix}
    assert orthogonalised == {f"blocks.{i}.{n}" for i in range(2)
                              for n in ("mixer.in_proj.weight", "mixer.out_proj.weight", "mlp.fc1.weight",
                                        "mlp.fc2.weight")}
    assert {"embedding.weight", "blocks.0.mixer.W1"} <= decayed and "blocks.0.mixer.ttt_norm_weight" in plain
    # The planner counts Muon's momentum over the same parameters.
    assert hidden_matrix_parameters(model.ttt) == sum(p.numel() for p in parameter_groups(model, 0.1, True)[0]["params"])


@pytest.fixture(scope="module")
def muon_run(tmp_path_factory, cache):
    run = tmp_path_factory.mktemp("muon") / "tp1"
    pretrain(run, cache, MUON)
    return run


def relative_loss_difference(a, b) -> float:
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    return max(abs(la[s] - lb[s]) / abs(la[s]) for s in la)


@pytest.mark.slow
def test_muon_at_tp_2_and_zero_3_equals_tp_1_and_zero_0_and_the_loss_falls(tmp_path, cache, muon_run, uninterrupted):
    # One launch for both (TP 2 x DP 2, ZeRO 3 over DP): a split matrix orthogonalised in parts, or
    # a ZeRO partition stepped without Muon, would each miss the tolerance by far.
    run = tmp_path / "tp2-zero3"
    pretrain(run, cache, MUON + ["parallel.tensor_parallel=2", "parallel.zero_stage=3"], 4)
    assert relative_loss_difference(muon_run, run) < TOLERANCE
    assert max_weight_difference(muon_run, run) < TOLERANCE
    # AdamW (`uninterrupted`) ends elsewhere by far more than the tolerance.
    assert max_weight_difference(uninterrupted, run) > 100 * TOLERANCE
    curve = losses(run)
    assert curve[6] < curve[1] - 0.2


def test_muon_resumes_bitwise(tmp_path, cache, muon_run):
    cut = cut_at(muon_run, tmp_path / "cut", 3)
    assert "at step 3" in pretrain(cut, cache, MUON).stdout
    assert losses(cut) == losses(muon_run)
    a, b = final_weights(muon_run), final_weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"


def test_a_run_keeps_its_optimizer(tmp_path):
    saved, requested = {"optimizer": {"name": "muon"}}, {"optimizer": {"name": "adamw"}}
    with pytest.raises(ResumeError, match="trained with optimizer.name=muon.*resume with optimizer.name=muon"):
        check_same_optimizer(saved, requested, tmp_path)
    check_same_optimizer({"optimizer": {}}, requested, tmp_path)  # written before optimizer.name: AdamW
