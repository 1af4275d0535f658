"""The memory model against built models (parameter counts) and short real runs (peaks)."""

import json
import os
import subprocess
import sys

import pytest

from megatron_ttt.config import load_config
from megatron_ttt.models.presets import preset
from megatron_ttt.planning.comm import traffic
from megatron_ttt.planning.hardware import Assumptions
from megatron_ttt.planning.layout import Layout
from megatron_ttt.planning.measure import planned
from megatron_ttt.planning.memory import hidden_matrix_parameters, local_parameters, memory, model_states
from tests.training.runs import free_port

BOUND = 0.15
"""Largest relative error allowed between predicted and measured peak bytes."""
RUN = ["train.steps=2", "data.seq_len=256", "data.micro_batch_size=4", "data.num_workers=0",
       "data.bundled_vocab_size=512", "logging.eval_interval=0", "logging.tensorboard=false", "model.preset=tiny"]


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_local_parameters_match_a_built_model(groups, layer_type, backbone):
    """Psi per TP rank: the built model's TP-split parameters (megatron-core's tensor_model_parallel
    tag) over tp, plus the rest whole."""
    from megatron_ttt.models.build import build_model

    model = preset("tiny", layer_type, backbone, vocab_size=512)
    params = list(build_model(model, groups).parameters())
    split = sum(p.numel() for p in params if getattr(p, "tensor_model_parallel", False))
    whole = sum(p.numel() for p in params) - split
    for tp in (1, 2, 4):
        assert local_parameters(model, tp) == split / tp + whole


def test_zero_stages_partition_what_they_should():
    model = preset("125m")
    states = {z: model_states(model, Layout(1, 8, zero=z, dtype="bf16")) for z in range(4)}
    psi = local_parameters(model, 1)
    assert states[0].optimizer == 12 * psi  # fp32 master + two moments, whole
    assert states[1].optimizer == 12 * psi / 8
    assert states[1].parameters == states[2].parameters == 2 * psi
    assert states[3].parameters == 2 * psi / 8
    assert states[2].gradients < states[1].gradients


def test_muon_keeps_one_whole_momentum_for_the_hidden_matrices():
    model = preset("125m")
    matrices = hidden_matrix_parameters(model) / 2  # on each of 2 TP ranks
    for zero, ranks in ((0, 1), (1, 4)):
        adam, muon = (model_states(model, Layout(1, 8, tp=2, zero=zero, optimizer=name)).optimizer
                      for name in ("adamw", "muon"))
        assert adam - muon == pytest.approx(8 * matrices / ranks - 4 * matrices)
    # Its traffic: the hidden matrices gathered over TP; under ZeRO 1 over the 4 DP ranks the whole
    # fp32 gradients all-reduced for the norm, the matrices' again.
    adam, muon = (traffic(model, Layout(1, 8, tp=2, zero=1, optimizer=name)) for name in ("adamw", "muon"))
    assert muon.tp - adam.tp == pytest.approx(4 * hidden_matrix_parameters(model) / 2)
    assert muon.dp - adam.dp == pytest.approx(2 * 3 / 4 * 4 * (local_parameters(model, 2) + matrices))


def _measure(tmp_path, nproc: int, overrides: list[str]) -> tuple[float, float]:
    tp = next((int(o.split("=")[1]) for o in overrides if o.startswith("parallel.tensor_parallel=")), 1)
    tokens = 256 * 4 * nproc // tp
    args = [f"run_dir={tmp_path / 'run'}", *RUN, f"data.global_batch_tokens={tokens}", *overrides]
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                  f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    out = tmp_path / "peak.json"
    env = os.environ | {"MTTT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*launch, "-m", "megatron_ttt.planning.measure", str(out), *args], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    asked = "parallel.sequence_parallel=true" in overrides and tp > 1
    assert all(r["sequence_parallel"] == asked for r in ranks), ranks  # the model built is the one asked for
    measured = max(r["peak_bytes"] for r in ranks)
    model, layout = planned(load_config(None, args), nproc, ranks[0]["sequence_parallel"])
    return memory(model, layout, Assumptions(), on_gpu=False).allocated, measured


def test_predicted_peak_matches_a_measured_run(tmp_path):
    predicted, measured = _measure(tmp_path, 1, ["train.dtype=fp32"])
    assert abs(predicted - measured) / measured < BOUND, (predicted, measured)


@pytest.mark.slow
def test_predicted_peak_matches_a_tensor_parallel_bf16_run(tmp_path):
    overrides = ["train.dtype=bf16", "parallel.tensor_parallel=2", "parallel.time_checkpoint_group=4"]
    predicted, measured = _measure(tmp_path, 2, overrides)
    assert abs(predicted - measured) / measured < BOUND, (predicted, measured)


@pytest.mark.slow
def test_predicted_peak_matches_a_sequence_parallel_bf16_run(tmp_path):
    """The planner's sequence-parallel terms against a model built with sequence parallelism."""
    overrides = ["train.dtype=bf16", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
                 "parallel.time_checkpoint_group=4"]
    predicted, measured = _measure(tmp_path, 2, overrides)
    assert abs(predicted - measured) / measured < BOUND, (predicted, measured)
