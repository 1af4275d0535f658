"""Resuming a run at another layout: DP size, ZeRO stage and TP size change between segments of
one run, each continuing from the previous segment's checkpoint; the losses and final weights
are compared with the same run trained without interruption at one layout."""

import json
import shutil

import pytest

from tests.training.runs import EVERY_STEP, cut_at, losses, max_weight_difference, pretrain, reseal

SAMPLES_PER_STEP = 8
"""data.global_batch_tokens 512 / seq_len 64."""

# (overrides, processes) of each segment; segment i resumes from the checkpoint of step i + 2.
SEGMENTS = [
    (["parallel.zero_stage=1"], 2),  # DP 1 -> 2, ZeRO 0 -> 1
    (["parallel.zero_stage=3"], 2),  # ZeRO 1 -> 3
    ([], 1),  # ZeRO 3 -> 0, DP 2 -> 1
    (["parallel.tensor_parallel=2", "data.micro_batch_size=8", "parallel.zero_stage=2"], 2),  # TP 1 -> 2, ZeRO 0 -> 2
]
LOSS_TOLERANCE = 1e-5
"""Relative; the layouts add float32 partial sums in other orders (TP vs DP agree to this, see
test_pretrain.py); a lost or repeated sample would change a batch's loss by far more."""


@pytest.mark.slow
def test_a_run_continues_across_dp_zero_and_tp_changes(tmp_path, cache, uninterrupted):
    reference, previous, report = losses(uninterrupted), uninterrupted, []
    for i, (overrides, nproc) in enumerate(SEGMENTS):
        step = i + 2
        run = cut_at(previous, tmp_path / f"segment{i}", step)
        out = pretrain(run, cache, EVERY_STEP + overrides, nproc)
        assert f"at step {step} at another layout" in out.stdout, out.stdout[-2000:]
        state = json.loads((run / "checkpoints" / f"step-{step + 1:08d}" / "trainer_state.json").read_text())
        assert state["loader"]["consumed_samples"] == (step + 1) * SAMPLES_PER_STEP
        assert state["adam_step"] == step + 1
        curve = losses(run)
        assert sorted(curve) == list(range(1, 7))
        report.append((overrides, nproc, max(abs(curve[s] - reference[s]) / reference[s] for s in range(step + 1, 7))))
        previous = run
    weights = max_weight_difference(uninterrupted, previous)
    print("segment, losses' largest relative difference:", *report, f"final weights: {weights:.2e}", sep="\n")
    assert all(worst <= LOSS_TOLERANCE for *_, worst in report), report
    assert weights <= 1e-5, weights


def test_an_old_checkpoint_at_another_layout_is_refused(tmp_path, cache, uninterrupted):
    run = cut_at(uninterrupted, tmp_path / "old", 3)
    step = run / "checkpoints" / "step-00000003"
    # As an older version wrote it: no layout-free part, no checksums.
    for name in ("model", "optimizer", "trainer_state.json", "model_config.json", "checksums.json"):
        shutil.rmtree(step / name) if (step / name).is_dir() else (step / name).unlink()
    out = pretrain(run, cache, EVERY_STEP + ["parallel.zero_stage=1"], check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{step} has no layout-free weights" in out.stderr and "zero_stage: checkpoint 0, requested 1" in out.stderr


def test_a_vocabulary_that_does_not_split_is_refused(tmp_path, cache, uninterrupted):
    run = cut_at(uninterrupted, tmp_path / "vocab", 3)
    config = run / "checkpoints" / "step-00000003" / "model_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"vocab_size": 513}))
    reseal(config.parent)
    out = pretrain(run, cache, EVERY_STEP + ["parallel.tensor_parallel=2", "data.micro_batch_size=8"], 2,
                   check=False)
    assert out.returncode != 0, out.stderr[-2000:]  # torchrun reports its ranks' status 2 as 1
    assert "vocabulary of 513 does not split over tensor_parallel=2" in out.stderr


@pytest.mark.slow
def test_an_fp32_checkpoint_resumes_in_bf16(tmp_path, cache, uninterrupted):
    run = cut_at(uninterrupted, tmp_path / "bf16", 3)
    out = pretrain(run, cache, EVERY_STEP + ["train.dtype=bf16", "parallel.zero_stage=1"])
    assert "at step 3 at another layout" in out.stdout
    fp32, bf16 = losses(uninterrupted), losses(run)
    print("fp32 -> bf16 resume, |bf16 - fp32| loss at steps 4-6:", [abs(bf16[s] - fp32[s]) for s in (4, 5, 6)])
    # The same weights in bf16 arithmetic: the first resumed loss agrees to bf16 rounding (a wrong
    # or missing load would start from another loss entirely, e.g. 6.25 at initialization).
    assert abs(bf16[4] - fp32[4]) < 0.01, (bf16, fp32)
    assert max(abs(bf16[s] - fp32[s]) for s in (5, 6)) < 0.05, (bf16, fp32)
