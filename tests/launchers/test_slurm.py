"""The launchers on a real one-node SLURM cluster: a 2-process CPU pretraining job equals plain
torchrun, preemption checkpoints, requeues and resumes to the same weights, scancel does not
requeue, and a data-prep array plus its merge job equals a local run."""

import json
import shutil
import time

import pytest
from megatron_ttt.cli import main
from tests.data_prep.corpora import make_tokenizer, write_corpus
from tests.launchers.jobs import (STEPS, assert_nothing_ran, assert_weights, event_time, events, hostile_dir, launch,
                                  now, preempt_after_step_3, report_timeline, submit, wait_done, wait_for)
from tests.training.runs import final_weights, losses, pretrain

pytestmark = pytest.mark.slow


def test_pretrain_job_equals_plain_torchrun(slurm, cache, reference, tmp_path, monkeypatch):
    """In a run directory named with spaces, quotes, `%j` and two commands: the job trains as
    anywhere else, its logs are in RUN/slurm/logs/, and nothing in the name runs."""
    monkeypatch.chdir(tmp_path)  # the job's working directory
    run, markers = hostile_dir(tmp_path)
    job_id, log = submit(slurm, cache, run, job_name="job")
    info = wait_done(slurm, job_id, log)
    assert log.exists(), list((run / "slurm" / "logs").iterdir())
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", (info, log.read_text())
    assert event_time(log, r"^finished: step 60 reached") and not event_time(log, "requeue"), log.read_text()
    assert losses(run) == losses(reference)
    train_log = (run / "slurm" / "logs" / f"train-{job_id}-r0-node0.log").read_text()
    assert "step 60/60" in train_log
    assert_nothing_ran(tmp_path, markers)


def test_preempted_job_checkpoints_requeues_and_resumes(slurm, cache, reference, tmp_path):
    run = tmp_path / "preempted"
    # A periodic checkpoint first, so the preemption's own comes after a completed one.
    job_id, log = submit(slurm, cache, run, ["checkpoint.interval=3"])
    timeline = {"submitted": now()}
    stopped = preempt_after_step_3(slurm, run, job_id, log, timeline)
    snapshot = tmp_path / "snapshot"  # the run as the restart finds it, to resume under plain torchrun
    shutil.copytree(run, snapshot, ignore=shutil.ignore_patterns("slurm"))
    # Release only once the old allocation is gone: slurmd refuses a credential issued within the
    # second the previous one was revoked ("Job credential revoked"), the reason for SLURM's hold.
    wait_for(lambda: slurm.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", "the node to be idle again")
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")  # skip the requeue hold
    timeline["released (StartTime=now)"] = now()
    train_log = run / "slurm" / "logs" / f"train-{job_id}-r1-node0.log"
    wait_for(lambda: train_log.exists() and "resumed from" in train_log.read_text(), "the restart's resume")
    timeline["resume seen in the restart's log"] = now()
    info = wait_done(slurm, job_id, log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log.read_text())
    assert f"at step {stopped}" in train_log.read_text()
    report_timeline(run, log, timeline, stopped, "preempt -> requeue -> resume timeline")
    # The restart resumed what `mttt pretrain --resume auto` resumes from the same checkpoint, bit for bit.
    pretrain(snapshot, cache, STEPS + ["checkpoint.interval=3"], nproc=2)
    assert losses(run) == losses(snapshot)
    assert_weights(final_weights(run), final_weights(snapshot), 0.0)
    # And it ends where the uninterrupted run ends: to the last float bit where the trainer's resume
    # is exact; resuming a 2-rank run at some steps (e.g. 6, 7) differs by ~1 ulp, with or without SLURM.
    ref = losses(reference)
    assert all(abs(loss - ref[step]) <= 1e-6 * abs(ref[step]) for step, loss in losses(run).items())
    assert_weights(final_weights(run), final_weights(reference), 1e-6)


def test_plain_scancel_does_not_requeue(slurm, cache, tmp_path):
    run = tmp_path / "cancelled"
    job_id, log = submit(slurm, cache, run, ["train.steps=1000"])
    wait_for(lambda: (run / "metrics.jsonl").exists(), "the first training step")
    slurm.run("scancel", job_id)  # SIGTERM to the batch shell and the ranks, which do not requeue
    info = wait_done(slurm, job_id, log)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert not any("requeue" in message for _, message in events(log)), log.read_text()


def test_data_shard_array_and_merge_equal_a_local_run(slurm, tmp_path, monkeypatch):
    """With the inputs named with spaces, quotes, `%j` and commands, and the output with all but
    the %, none of which run."""
    monkeypatch.chdir(tmp_path)  # the jobs' working directory
    tokenizer = make_tokenizer(tmp_path / "tok")
    inputs_dir, input_markers = hostile_dir(tmp_path / "in")
    inputs = [str(p) for p in write_corpus(inputs_dir, files=3)]
    common = ["--tokenizer", tokenizer.info().path, "--seq-len", "64", "--val-fraction", "0.1", "--input", *inputs]
    assert main(["data", "shard", "--output", str(tmp_path / "local"), "--quiet", *common]) == 0
    out, markers = hostile_dir(tmp_path / "out")
    array_id, merge_id = launch(slurm, {}, "data-shard", "--array", "2", "--time", "10", "--", "--output", str(out),
                                *common)
    logs = out / "slurm" / "logs"
    for task in (0, 1):
        assert wait_done(slurm, f"{array_id}_{task}", logs / f"mttt-data-shard-{array_id}-{task}.out")["JobState"] == "COMPLETED"
    merge = wait_done(slurm, merge_id, logs / f"mttt-data-shard-merge-{merge_id}.out")
    assert merge["JobState"] == "COMPLETED" and merge["Dependency"] in ("(null)", f"afterok:{array_id}_*(ok)"), merge
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["slice-00000-of-00002.json",
                                                                     "slice-00001-of-00002.json"]
    assert json.loads((out / "manifest.json").read_text()) == json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert_nothing_ran(tmp_path, markers + input_markers)
