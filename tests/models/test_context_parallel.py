"""The model at CP = 2 (and CP 2 x TP 2 with sequence parallel), each rank holding its slice of the
sequence, equals the dense twin on the whole sequence: logits, loss and every parameter's
gradient, every layer type (LaCT on its transformer backbone), both backbones, and a hybrid with full and sliding-window attention
(its key/value heads repeated where they do not split over CP). T is not a multiple of the
mini-batch, and the Mamba pre-conv reads across the ranks' boundary. Under
document_boundaries=reset (documents beginning at and just after the ranks' boundary) the split
model equals itself on one rank."""

import itertools
from dataclasses import replace

import pytest
import torch

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from tests.distributed import run_distributed
from tests.models import cp_cases

F64_TOL = 1e-10
LOSS_TOL = 1e-6
"""megatron-core's vocab-parallel cross entropy computes in float32."""

CP2 = [dict(layer_type=lt, backbone=bb, tp=1, sequence_parallel=False, seq_len=20)
       for lt, bb in itertools.product(("linear", "mlp"), ("transformer", "mamba"))]
CP2 += [dict(layer_type="linear", backbone="mamba", hybrid=True, tp=1, sequence_parallel=False, seq_len=20),
        dict(layer_type="mlp", backbone="transformer", hybrid=True, kv_heads=1, tp=1, sequence_parallel=False,
             seq_len=20)]
CP2 += [dict(layer_type="linear", backbone="mamba", hybrid=True, reset=True, tp=1, sequence_parallel=False,
             seq_len=20),
        dict(layer_type="mlp", backbone="transformer", reset=True, tp=1, sequence_parallel=False, seq_len=20)]
CP2 += [dict(layer_type="lact", backbone="transformer", reset=reset, tp=1, sequence_parallel=False, seq_len=20)
        for reset in (False, True)]
CP2_TP2 = [dict(layer_type="mlp", backbone="mamba", tp=2, sequence_parallel=True, seq_len=20),
           dict(layer_type="linear", backbone="mamba", hybrid=True, tp=2, sequence_parallel=True, seq_len=20),
           dict(layer_type="mlp", backbone="mamba", hybrid=True, reset=True, tp=2, sequence_parallel=True,
                seq_len=20),
           dict(layer_type="lact", backbone="transformer", lact={"lact_heads": 4}, reset=True, tp=2,
                sequence_parallel=True, seq_len=20)]


def check(rows: list[dict], world: int) -> None:
    for row in rows:
        label = (f"world {world} TP={row['tp']} sp={row['sequence_parallel']} {row['layer_type']}/{row['backbone']}"
                 f"{' hybrid' if row.get('hybrid') else ''}{' reset' if row.get('reset') else ''}")
        assert row["logits"] < F64_TOL and row["loss"] < LOSS_TOL, f"{label}: {row}"
        assert row["grads"] < F64_TOL, f"{label}: gradient of {row['worst']} off by {row['grads']:.2e}"


def test_context_parallel_2_equals_twin():
    check(run_distributed(2, cp_cases.compare_with_twin, CP2)[0], 2)


@pytest.mark.slow
def test_context_parallel_2_with_tensor_parallel_2_and_sequence_parallel_equals_twin():
    check(run_distributed(4, cp_cases.compare_with_twin, CP2_TP2)[0], 4)


@pytest.mark.parametrize("cfg, cp, message", [
    (cp_cases.TINY, 3, r"tensor_parallel=1 x context_parallel=3 does not divide the 4 heads"),
    (replace(cp_cases.HYBRID, layer_pattern="*TW", num_heads=2, hidden_size=16, num_kv_heads=1), 4,
     r"tensor_parallel=1 x context_parallel=4 does not divide the 2 heads"),
])
def test_heads_that_do_not_split_over_cp_are_named(groups, cfg, cp, message):
    with pytest.raises(ValueError, match=message):
        TTTLanguageModel(megatron_config(cfg, context_parallel=cp), cfg, groups)


def test_last_logits_is_refused_under_cp(groups):
    model = TTTLanguageModel(megatron_config(cp_cases.TINY, context_parallel=2), cp_cases.TINY, groups)
    with pytest.raises(ValueError, match="last_logits needs sequence_parallel off and context_parallel 1"):
        model.last_logits(torch.zeros(1, 4, dtype=torch.long))
