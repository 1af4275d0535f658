"""Short real pretraining runs: exact resume, ZeRO stages, TP vs DP, signals, kills, faults."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from megatron_ttt.training.signals import EXIT_INTERRUPTED, EXIT_PREEMPTED
from tests.training.runs import EVERY_STEP, FAST, command, environment, final_weights, flip_bytes, losses, metrics, pretrain


def test_loss_falls_and_the_run_directory_is_complete(tmp_path, cache):
    run = tmp_path / "run"
    # With the EOS predictions masked: the masked losses (training and validation) in a real run,
    # at no extra launch; tests/training/test_loss.py checks what they compute.
    pretrain(run, cache, ["train.steps=12", "checkpoint.interval=6", "data.mask_eod_loss=true"])
    curve = losses(run)
    assert sorted(curve) == list(range(1, 13)) and curve[12] < curve[1] - 0.5
    assert (run / "loss.png").exists() and (run / "config.yaml").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000012"]


def flipped(step: Path) -> Path:
    flip_bytes(step / "mp_rank_00_model_states.pt", 999, 1999)
    return step / "mp_rank_00_model_states.pt"


def truncated(step: Path) -> Path:
    """The layout-free weights alone: what a resume at the same layout does not read."""
    path = next((step / "model").glob("*.distcp"))
    path.write_bytes(path.read_bytes()[:-100])
    return path


def missing(step: Path) -> Path:
    path = next(step.glob("*optim_states.pt"))
    path.unlink()
    return path


@pytest.fixture(scope="module")
def data_parallel_2(tmp_path_factory, cache) -> dict[int, Path]:
    """The default run at data parallel 2 under each ZeRO stage, trained once for the tests that
    compare them, damage them or compare tensor parallelism with them."""
    root = tmp_path_factory.mktemp("dp2")
    for stage in (0, 1, 2, 3):
        pretrain(root / f"zero{stage}", cache, [f"parallel.zero_stage={stage}"], 2)
    return {stage: root / f"zero{stage}" for stage in (0, 1, 2, 3)}


@pytest.mark.parametrize("zero_stage, on_resume, damage", [
    (None, ["parallel.time_checkpoint_group=2"], flipped),  # a run option, not the model: bitwise neutral
    pytest.param(2, [], truncated, marks=pytest.mark.slow),
    pytest.param(3, [], missing, marks=pytest.mark.slow),
])
def test_a_damaged_latest_checkpoint_resumes_the_previous_one_as_an_uninterrupted_run(
        request, tmp_path, cache, uninterrupted, zero_stage, on_resume, damage):
    """One process (a checkpoint every step), or data parallel 2 under ZeRO 2 and 3 (every 3 steps)."""
    cut = tmp_path / "cut"
    if zero_stage is None:
        whole, overrides, nproc, previous = uninterrupted, EVERY_STEP, 1, 5
    else:
        whole = request.getfixturevalue("data_parallel_2")[zero_stage]
        overrides, nproc, previous = [f"parallel.zero_stage={zero_stage}"], 2, 3
    shutil.copytree(whole, cut)
    step = cut / "checkpoints" / "step-00000006"
    damaged = damage(step)
    out = pretrain(cut, cache, overrides + on_resume, nproc)
    assert f"warning: {step} is damaged: {damaged} " in out.stderr, out.stderr[-2000:]
    assert "resumed from" in out.stdout and f"at step {previous}" in out.stdout
    assert losses(cut) == losses(whole)  # steps 4-6 trained again replace their old lines
    a, b = final_weights(whole), final_weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"


def test_resume_after_step_6_equals_an_uninterrupted_run(tmp_path, cache):
    # DeepSpeed's CPU Adam carries beta^t as a running product; resumed after step 3 it agreed
    # with pow(beta, t) by chance, from step 6 on it did not (1 ulp in every later update).
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    steps = ["train.steps=9", "checkpoint.interval=6", "logging.eval_interval=9"]
    pretrain(whole, cache, steps)
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000009")
    (cut / "checkpoints" / "latest").write_text("step-00000006")
    assert "at step 6" in pretrain(cut, cache, steps).stdout
    assert losses(cut) == losses(whole)
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"


@pytest.mark.parametrize("model, on_resume", [
    (["model.layer_pattern=TW", "model.attention_window=24"], []),
    # LaCT: chunks of 16 in samples of 64, three fast-weight updates a sample, documents reset;
    # resumed with time-axis checkpointing over pairs of chunks (a run option: bitwise neutral).
    (["model.layer_type=lact", "model.lact_chunk_size=16"], ["parallel.time_checkpoint_group=2"]),
], ids=["hybrid", "lact"])
def test_a_hybrid_and_lact_train_and_resume_bitwise(tmp_path, cache, model, on_resume):
    hybrid = model + ["train.steps=12", "checkpoint.interval=6"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    pretrain(whole, cache, hybrid)
    curve = losses(whole)
    assert curve[12] < curve[1] - 0.5
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000012")
    (cut / "checkpoints" / "latest").write_text("step-00000006")
    assert "at step 6" in pretrain(cut, cache, hybrid + on_resume).stdout
    assert losses(cut) == curve
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"


@pytest.mark.slow
def test_zero_stages_agree_at_data_parallel_2(data_parallel_2):
    curves = {stage: losses(run) for stage, run in data_parallel_2.items()}
    for stage in (1, 2, 3):
        for step, loss in curves[0].items():
            assert abs(curves[stage][step] - loss) <= 1e-5 * abs(loss), (stage, step, curves[stage][step], loss)


@pytest.mark.slow
def test_tensor_parallel_equals_data_parallel(tmp_path, cache, data_parallel_2):
    dp = losses(data_parallel_2[0])
    tp = losses(pretrain(tmp_path / "tp", cache, ["parallel.tensor_parallel=2", "data.micro_batch_size=8"], 2)
                and tmp_path / "tp")
    for step in dp:
        assert abs(tp[step] - dp[step]) <= 1e-5 * abs(dp[step]), (step, tp[step], dp[step])


@pytest.mark.slow
def test_a_hybrid_at_tensor_parallel_2_with_sp_equals_one_process(tmp_path, cache):
    hybrid = ["model.layer_pattern=*W", "model.attention_window=24"]
    one = losses(pretrain(tmp_path / "one", cache, hybrid) and tmp_path / "one")
    tp_sp = ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true", "data.micro_batch_size=8"]
    tp = losses(pretrain(tmp_path / "tp", cache, hybrid + tp_sp, 2) and tmp_path / "tp")
    for step in one:
        assert abs(tp[step] - one[step]) <= 1e-5 * abs(one[step]), (step, tp[step], one[step])


def _start(run, cache, overrides, nproc=1):
    proc = subprocess.Popen(command(run, overrides, nproc), env=environment(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


def logged_steps(run: Path) -> list[int]:
    """The step of every line of metrics.jsonl, in order (repeats included)."""
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_saves_a_second_stops_at_once_and_each_step_is_logged_once(tmp_path, cache):
    # A terminal's Ctrl-C reaches its whole foreground process group: the data loader's worker too.
    run, endless = tmp_path / "run", ["train.steps=10000", "checkpoint.interval=2", "data.num_workers=1"]
    proc = _start(run, cache, endless)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED and "Traceback" not in err, err[-2000:]
    saved = max(losses(run))
    assert (run / "checkpoints" / "latest").read_text() == f"step-{saved:08d}"
    assert f"stopped by SIGINT after step {saved} (saved)" in out

    proc = _start(run, cache, endless)
    deadline = time.time() + 120
    while logged_steps(run)[-1] <= saved:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)  # less than the step and checkpoint it starts
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED and "Traceback" not in err, err[-2000:]
    assert "stopped at once by a second Ctrl-C" in err.splitlines()[-1]
    assert logged_steps(run) == list(range(1, logged_steps(run)[-1] + 1))  # steps after a resume: see the kill -9 test


def test_ctrl_c_to_mttt_torchrun_saves_and_says_so_in_one_line(tmp_path, cache):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "megatron_ttt.cli", "torchrun", "--nproc-per-node", "1",
                             "--shutdown-timeout", "60", "pretrain", f"run_dir={run}", *FAST, "train.steps=10000"],
                            env=environment(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # torchrun's group: the ranks run in sessions of their own
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("mttt torchrun: stopped by SIGINT, passed on to the ranks with "
                                            "--shutdown-timeout 60 s to finish")
    saved = max(losses(run))
    assert (run / "checkpoints" / "latest").read_text() == f"step-{saved:08d}"
    assert f"stopped by SIGINT after step {saved} (saved)" in out


def test_sigterm_to_the_whole_process_group_still_writes_the_final_checkpoint(tmp_path, cache):
    # scancel and preemption signal every process of the job step, the checkpoint writer's helper
    # processes included.
    run = tmp_path / "run"
    proc = _start(run, cache, ["train.steps=10000", "checkpoint.interval=2"])
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    step = max(losses(run))
    assert (run / "checkpoints" / "latest").read_text() == f"step-{step:08d}" and "stopped by SIGTERM" in out
    assert step > 2 and (run / "checkpoints" / f"step-{step:08d}" / "model").is_dir()


def test_kill_9_mid_checkpoint_leaves_a_loadable_latest(tmp_path, cache):
    run = tmp_path / "run"
    proc = _start(run, cache, ["train.steps=10000", "checkpoint.interval=1", "checkpoint.keep=3"])
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = (run / "checkpoints" / "latest").read_text()
    step = int(latest.split("-")[1])
    out = pretrain(run, cache, ["checkpoint.interval=1", "checkpoint.keep=3", f"train.steps={step + 1}"])
    assert f"at step {step}" in out.stdout
    assert f"the schedule changed on resume (train.steps 10000 -> {step + 1}): from step {step + 1} the learning " \
           "rate is " in out.stdout
    assert logged_steps(run) == list(range(1, step + 2))  # steps logged after the checkpoint were dropped
    assert "val_loss" in metrics(run)[step + 1]  # the last step validates, whatever logging.eval_interval
    elapsed = [row["elapsed_s"] for row in metrics(run).values()]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0  # goes on across the restart
    assert re.search(r"\| elapsed \d+s \| eta 0s$", out.stdout.splitlines()[-3]), out.stdout[-600:]


def test_kill_9_of_torchrun_takes_its_ranks_and_their_workers_along(tmp_path, cache):
    # torchrun starts each rank in a session of its own: nothing else reaches them once it is gone.
    proc = _start(tmp_path / "run", cache, ["train.steps=10000", "data.num_workers=1"], nproc=2)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 4, family  # two ranks, a data-loader worker each
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.time() + 30
    while alive := [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.time() < deadline, f"still running 30 s after torchrun was killed: {alive}"
        time.sleep(0.2)


def test_a_checkpoint_of_another_model_is_refused(tmp_path, cache):
    run = tmp_path / "run"
    pretrain(run, cache, ["train.steps=3"])
    out = pretrain(run, cache, ["train.steps=3", "model.layer_type=mlp"], check=False)
    assert out.returncode == 2 and "model.layer_type: 'linear' there, 'mlp' now" in out.stderr


def test_nonfinite_loss_stops_without_a_checkpoint(tmp_path, cache):
    run = tmp_path / "run"
    out = pretrain(run, cache, ["train.steps=5", "checkpoint.interval=1", "optimizer.lr=1e12",
                                "optimizer.grad_clip=0", "optimizer.warmup_fraction=0"], check=False)
    assert out.returncode == 3, out.stderr[-2000:]
    assert re.search(r"step \d+: the (loss is (nan|inf)|weights hold NaN or inf)", out.stdout), out.stdout[-2000:]
    for tag in (run / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in final_weights(run, tag.name).values() if t is not None)


def test_checkpointing_switches_keep_the_losses_and_bf16_trains(tmp_path, cache, uninterrupted):
    plain = losses(uninterrupted)  # the default run, with a checkpoint every step
    for name, switch in (("blocks", "parallel.block_checkpointing=true"), ("time", "parallel.time_checkpoint_group=2")):
        assert losses(pretrain(tmp_path / name, cache, [switch]) and tmp_path / name) == plain, name
    bf16 = losses(pretrain(tmp_path / "bf16", cache, ["train.dtype=bf16"]) and tmp_path / "bf16")
    # Same initial weights: the first loss agrees to bf16 rounding. After that bf16 arithmetic
    # drifts (0.064 after 6 steps when measured); it must still train.
    assert abs(bf16[1] - plain[1]) < 0.01 and bf16[6] < bf16[1] - 0.2
    assert max(abs(bf16[s] - plain[s]) for s in plain) < 0.15
