"""A run started from another model's weights (train.init_from): a stage at twice the context from
the `uninterrupted` run's checkpoint, from a model directory, with its optimizer state; the
weights before the first step, the first loss, the record, what is refused, and a resume of the
new run, which continues its own checkpoint."""

import json
import math
import shutil
from pathlib import Path

import torch

from megatron_ttt.checkpoint import layout_free
from megatron_ttt.checkpoint.checksums import weights_checksum
from megatron_ttt.checkpoint.convert import mttt_to_mttt
from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.config.loading import load_config
from megatron_ttt.errors import UserInputError
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from megatron_ttt.training.trainer import build, resume
from megatron_ttt.training.zero_state import _whole
from tests.distributed import run_distributed
from tests.training.runs import FAST, cut_at, flip_bytes, losses, metrics, pretrain

VOCAB = 512
"""data.bundled_vocab_size in FAST: a model at its initialization scores about log(512) = 6.24."""
STAGE_TWO = ["data.seq_len=128", "train.steps=2"]
"""Twice the context of the source run, the same tokens per step (4 x 128 = 512)."""


def test_a_stage_at_twice_the_context_starts_at_the_source_loss(tmp_path, cache, uninterrupted):
    source = uninterrupted / "checkpoints" / "step-00000006"
    stage = tmp_path / "stage2"
    out = pretrain(stage, cache, [f"train.init_from={uninterrupted}", *STAGE_TWO])
    assert f"initialized from {source} (step 6, weights checksum {weights_checksum(source)})" in out.stdout
    record = json.loads((stage / "init_from.json").read_text())
    assert record == {"init_from": str(uninterrupted), "path": str(source.resolve()), "step": 6,
                      "weights_checksum": weights_checksum(source), "optimizer": "fresh"}
    first, last = losses(stage)[1], metrics(uninterrupted)[6]["val_loss"]
    print(f"stage 1 val loss {last:.4f}, stage 2 first loss {first:.4f}, log(vocab) {math.log(VOCAB):.4f}")
    # Random weights would score log(512) = 6.24; the source run ended 0.38 below that.
    assert abs(first - last) < 0.1 and first < math.log(VOCAB) - 0.25, (first, last)


def _started(groups, cache, overrides: list[str]):
    """The fp32 (master) weights, Adam moments and Adam step count of a run built and started or
    resumed (before its next step), or the message of the UserInputError that refused it."""
    try:
        run = build(load_config(None, FAST + overrides), groups, cache)
    except UserInputError as exc:
        return str(exc)
    resume(run)
    params = dict(run.engine.module.named_parameters())
    state = run.engine.optimizer.state
    moments = {key: {n: state[p][key].clone() for n, p in params.items() if p in state} for key in layout_free.MOMENTS}
    weights = {n: _whole(run.engine, p, None).detach().clone() for n, p in params.items()}
    return weights, moments, max((int(s["step"]) for s in state.values()), default=0)


def _layout_free(checkpoint: Path, groups) -> dict:
    """The checkpoint's weights (key None) and Adam moments, by part and parameter."""
    parts = {}
    layout_free.read(checkpoint, load_model(checkpoint, groups),
                     lambda part, name, value: parts.setdefault(part, {}).__setitem__(name, value.clone()))
    return parts


def _starts(rank, world, store, tmp, cache, run):
    groups = init_parallel(ParallelLayout(world), store=store)
    checkpoint = run / "checkpoints" / "step-00000006"
    sources = {step: _layout_free(run / "checkpoints" / f"step-{step:08d}", groups) for step in (3, 6)}
    model_dir = tmp / "converted"
    mttt_to_mttt(checkpoint, model_dir, groups)
    damaged = tmp / "damaged"
    shutil.copytree(checkpoint, damaged)
    shard = next(p for p in sorted((damaged / "model").iterdir()) if p.suffix == ".distcp")
    flip_bytes(shard, 100)
    # A stage that saved its step 3 and resumes: train.init_from is not read again.
    cut_at(run, tmp / "runs" / "resumed", 3)
    runs = {"checkpoint": [f"train.init_from={checkpoint}", "data.seq_len=128"],
            "bf16": [f"train.init_from={checkpoint}", "train.dtype=bf16", "parallel.zero_stage=1"],
            "model directory": [f"train.init_from={model_dir}"],
            "optimizer": [f"train.init_from={checkpoint}", "train.init_optimizer=true"],
            "model directory with optimizer": [f"train.init_from={model_dir}", "train.init_optimizer=true"],
            "damaged": [f"train.init_from={damaged}"],
            "missing": [f"train.init_from={tmp / 'nowhere'}"],
            "another model": [f"train.init_from={run}", "model.backbone=transformer", "model.mini_batch_size=8",
                              "model.rope_theta=500000"],
            "resumed": [f"train.init_from={model_dir}"]}
    started = {name: _started(groups, cache, [f"run_dir={tmp / 'runs' / name.replace(' ', '-')}", *overrides])
               for name, overrides in runs.items()}
    destroy_parallel()
    return sources, started, str(shard)


def test_the_weights_before_the_first_step_are_the_source_s_and_what_is_refused(tmp_path, cache, uninterrupted):
    sources, started, shard = run_distributed(1, _starts, tmp_path, cache, uninterrupted)[0]
    for name, step, optimizer in (("checkpoint", 6, False), ("bf16", 6, False), ("model directory", 6, False),
                                  ("optimizer", 6, True), ("resumed", 3, True)):
        weights, moments, adam_step = started[name]
        source = sources[step]
        assert weights.keys() == source[None].keys()
        assert all(torch.equal(weights[n], source[None][n]) for n in weights), name
        if optimizer:
            assert adam_step == step, name
            assert all(torch.equal(moments[key][n], source[key][n]) for key in layout_free.MOMENTS for n in weights)
        else:
            assert adam_step == 0 and moments == {key: {} for key in layout_free.MOMENTS}, name
    assert "train.init_optimizer=true takes AdamW's moments" in started["model directory with optimizer"]
    assert f"is damaged: {shard} has CRC-32" in started["damaged"]
    assert f"train.init_from={tmp_path / 'nowhere'}: {tmp_path / 'nowhere'} does not exist" in started["missing"]
    assert ("holds another model than the config describes (model.backbone: 'mamba' there, 'transformer' now; "
            "model.mini_batch_size: 16 there, 8 now)") in started["another model"]
    assert not (tmp_path / "runs" / "damaged").exists() and not (tmp_path / "runs" / "another-model").exists()
