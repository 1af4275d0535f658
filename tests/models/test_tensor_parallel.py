"""The megatron-core model at TP = 1, 2, 4 (real gloo processes) equals the dense twin: logits,
loss and every parameter gradient, every layer type (LaCT on its transformer backbone), both backbones, sequence parallel on and off,
T not a multiple of the mini-batch."""

import itertools

import pytest

from tests.distributed import run_distributed
from tests.models.tp_cases import compare_with_twin

CASES = [dict(layer_type=lt, backbone=bb, sequence_parallel=sp, seq_len=20)
         for lt, bb, sp in itertools.product(("linear", "mlp"), ("transformer", "mamba"), (False, True))]
CASES += [dict(layer_type="lact", backbone="transformer", sequence_parallel=sp, seq_len=20) for sp in (False, True)]
F64_TOL = 1e-10
LOSS_TOL = 1e-6
"""megatron-core's vocab-parallel cross entropy computes in float32."""


@pytest.mark.parametrize("world", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_tensor_parallel_equals_twin(world):
    # LaCT's fast-weight heads split over TP: 4 ranks need 4 of them (2 elsewhere, the cheaper twin).
    cases = [c | ({"lact": {"lact_heads": 4}} if c["layer_type"] == "lact" and world == 4 else {})
             for c in CASES if world > 1 or not c["sequence_parallel"]]
    for row in run_distributed(world, compare_with_twin, cases)[0]:
        label = f"TP={world} {row['layer_type']}/{row['backbone']} sp={row['sequence_parallel']}"
        assert row["logits"] < F64_TOL and row["loss"] < LOSS_TOL, f"{label}: {row}"
        assert row["grads"] < F64_TOL, f"{label}: gradient of {row['worst']} off by {row['grads']:.2e}"
