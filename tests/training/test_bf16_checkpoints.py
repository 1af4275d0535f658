"""bf16 without ZeRO: DeepSpeed keeps the fp32 masters and Adam's moments in one flat tensor per
parameter group; the layout-free checkpoint must slice them per parameter."""

import shutil

import pytest
import torch

from megatron_ttt.checkpoint.model_dir import load_model
from tests.training.runs import final_weights, losses, pretrain


@pytest.mark.slow
def test_bf16_zero0_checkpoint_holds_each_parameters_master_and_resumes_at_zero1(tmp_path, cache,
                                                                                 groups):
    steps = ["train.dtype=bf16", "train.steps=6", "checkpoint.interval=3", "checkpoint.keep=2"]
    whole = tmp_path / "whole"
    pretrain(whole, cache, steps)
    step3 = whole / "checkpoints" / "step-00000003"
    masters = dict(load_model(step3, groups).named_parameters())
    module = final_weights(whole, "step-00000003")
    for name, weight in module.items():
        if weight is not None and name in masters:
            assert torch.equal(masters[name].detach().to(torch.bfloat16), weight), name

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    (cut / "checkpoints" / "latest").write_text("step-00000003")
    out = pretrain(cut, cache, [*steps, "parallel.zero_stage=1"])
    assert "at another layout" in out.stdout
    a, b = losses(whole), losses(cut)
    # ZeRO-1 accumulates bf16 gradients in fp32 where ZeRO-0 accumulates them in bf16.
    assert max(abs(a[s] - b[s]) / abs(a[s]) for s in (4, 5, 6)) < 0.02
