"""The launchers on a real two-node SLURM cluster (tests/launchers/two_node_cluster.py): a job
across both nodes equals one node (also with each sample's sequence split over them),
preemption and the time limit checkpoint and requeue both nodes, a lost node fails the job
naming it and a resubmission resumes, and a data-prep array spreads over the nodes and merges to
a local run's manifest."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from megatron_ttt.cli import main
from tests.data_prep.corpora import make_tokenizer, write_corpus
from tests.launchers.jobs import (assert_weights, event_time, launch, now, preempt_after_step_3, report_timeline,
                                  submit, wait_done, wait_for)
from tests.launchers.two_node_cluster import INTERFACE
from tests.training.runs import final_weights, losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The cpu-test profile as a site with two CPU machines edits it: gloo over the link between
    the nodes, and a whole node per job, so array tasks spread over both."""
    from importlib import resources

    body = yaml.safe_load((resources.files("megatron_ttt.launchers") / "profiles" / "cpu-test.yaml").read_text())
    body["environment"]["GLOO_SOCKET_IFNAME"] = INTERFACE
    body["sbatch_options"] = ["--exclusive"]
    path = tmp_path_factory.mktemp("profile") / "two-cpu-nodes.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def across_two_nodes(two_nodes, cache, profile, run, extra=(), **limits):
    return submit(two_nodes, cache, run, extra, nodes=2, procs_per_node=1, profile=profile, **limits)


def node_logs(run, job_id, restart):
    return [run / "slurm" / "logs" / f"train-{job_id}-r{restart}-node{i}.log" for i in (0, 1)]


def release_when_idle(cluster, job_id):
    """Start a requeued job once both nodes are idle again (see test_slurm.py: a credential issued
    in the second the previous one was revoked is refused)."""
    wait_for(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t").stdout.split() == ["idle", "idle"],
             "both nodes idle again")
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def test_a_job_across_two_nodes_equals_one_node(two_nodes, cache, reference, profile, tmp_path):
    run = tmp_path / "two"
    job_id, log = across_two_nodes(two_nodes, cache, profile, run)
    info = wait_done(two_nodes, job_id, log)
    assert info["JobState"] == "COMPLETED", (info, log.read_text())
    assert hostnames(two_nodes, info["NodeList"]) == sorted(two_nodes.nodes)
    ref, got = losses(reference), losses(run)
    assert got.keys() == ref.keys()
    assert all(abs(got[s] - ref[s]) <= 1e-5 * abs(ref[s]) for s in ref), (got, ref)
    head, other = node_logs(run, job_id, 0)
    assert "step 60/60" in head.read_text() and other.exists()


def test_context_parallel_across_two_nodes_equals_one_node(two_nodes, cache, reference, profile, tmp_path):
    """Each sample's sequence split over the two nodes (CP 2, DP 1): every mixer's all-to-alls
    and the pre-conv's halo cross the link."""
    run = tmp_path / "context"
    job_id, log = across_two_nodes(two_nodes, cache, profile, run,
                                   ["parallel.context_parallel=2", "data.micro_batch_size=8"])
    info = wait_done(two_nodes, job_id, log)
    assert info["JobState"] == "COMPLETED", (info, log.read_text())
    head, _ = node_logs(run, job_id, 0)
    assert "layout: TP 1, CP 2, DP 1" in head.read_text()
    ref, got = losses(reference), losses(run)
    assert got.keys() == ref.keys()
    assert all(abs(got[s] - ref[s]) <= 1e-5 * abs(ref[s]) for s in ref), (got, ref)


def hostnames(cluster, nodelist: str) -> list[str]:
    return sorted(cluster.run("scontrol", "show", "hostnames", nodelist).stdout.split())


def test_preemption_stops_both_nodes_and_the_restart_resumes(two_nodes, cache, reference, profile, tmp_path):
    run = tmp_path / "preempted"
    job_id, log = across_two_nodes(two_nodes, cache, profile, run, ["checkpoint.interval=3"])
    timeline = {"submitted": now()}
    stopped = preempt_after_step_3(two_nodes, run, job_id, log, timeline)
    release_when_idle(two_nodes, job_id)
    timeline["released (StartTime=now)"] = now()
    restart_logs = node_logs(run, job_id, 1)
    wait_for(lambda: restart_logs[0].exists() and "resumed from" in restart_logs[0].read_text(), "the resume")
    timeline["resume seen in the restart's log"] = now()
    info = wait_done(two_nodes, job_id, log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log.read_text())
    assert f"at step {stopped}" in restart_logs[0].read_text()
    report_timeline(run, log, timeline, stopped, "two-node preempt -> requeue -> resume timeline")
    ref = losses(reference)
    assert all(abs(loss - ref[step]) <= 1e-6 * abs(ref[step]) for step, loss in losses(run).items())
    assert_weights(final_weights(run), final_weights(reference), 1e-6)


def test_the_time_limit_checkpoints_in_the_grace_time_and_requeues(two_nodes, cache, profile, tmp_path):
    # A 1-minute limit with USR1 40 s before it (SLURM sends it when its periodic check sees the
    # time, here 20-30 s in): the segment checkpoints in the grace time and requeues itself, and
    # the restart resumes from that checkpoint; then the test cancels it (a run to the end costs a
    # minute a segment; the preemption test runs a requeued job to the end and checks its losses).
    run = tmp_path / "limited"
    job_id, log = across_two_nodes(two_nodes, cache, profile, run, ["train.steps=100000"], time_limit="1",
                                   grace=40)
    info = wait_done_or_requeued(two_nodes, job_id, 0, log)
    text = log.read_text()
    assert info["JobState"] == "PENDING" and info["Restarts"] == "1", (info, text)
    print("\n" + "\n".join(line for line in text.splitlines() if "mttt-slurm" in line))
    assert event_time(log, "received USR1") < event_time(log, "requeueing")
    stopped = re.search(r"latest checkpoint: step-(\d+)", text)
    assert stopped, text
    release_when_idle(two_nodes, job_id)
    restart_log = node_logs(run, job_id, 1)[0]
    resumed = wait_for(lambda: restart_log.exists() and re.search(r"resumed from \S+ at step (\d+)",
                                                                  restart_log.read_text()), "the restart's resume")
    two_nodes.run("scancel", job_id)
    assert wait_done(two_nodes, job_id, log)["JobState"] == "CANCELLED"
    assert int(resumed.group(1)) == int(stopped.group(1)) > 0


def wait_done_or_requeued(cluster, job_id: str, restarts: int, log) -> dict:
    """The job's state once it ended or was requeued again (PENDING with more restarts)."""
    def settled():
        info = cluster.job(job_id)
        ended = info["JobState"] in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL")
        return info if ended or (info["JobState"] == "PENDING" and int(info["Restarts"]) > restarts) else None
    try:
        return wait_for(settled, f"job {job_id} to end or requeue", timeout=240, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text() if log.exists() else ''}") from None


def _kill_training_on(cluster, node: str) -> list[int]:
    """kill -9 every Python process of the job on `node` (torchrun and its ranks): a lost node."""
    pids = subprocess.run(["ip", "netns", "pids", cluster.nodes[node]], capture_output=True, text=True).stdout.split()
    victims = [int(p) for p in pids if "megatron_ttt" in _cmdline(p) or "torch.distributed.run" in _cmdline(p)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return victims


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_lost_node_fails_the_job_naming_it_and_a_resubmission_resumes(two_nodes, cache, profile,
                                                                        tmp_path):
    run = tmp_path / "lost"
    steps = ["train.steps=200", "checkpoint.interval=3"]
    job_id, log = across_two_nodes(two_nodes, cache, profile, run, steps)
    wait_for(lambda: (run / "checkpoints" / "latest").exists() and len(losses(run)) >= 5, "step 5")
    lost = list(two_nodes.nodes)[1]
    assert _kill_training_on(two_nodes, lost)
    info = wait_done(two_nodes, job_id, log)
    text = log.read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", (info, text)
    failed = re.search(r"failed after step (\d+), the last logged \(latest checkpoint: (step-\d+)\)", text)
    assert failed, text
    assert re.search(rf"{lost}: (a rank was killed|torchrun killed by signal 9|no exit status)", text), text
    tag = failed.group(2)
    assert int(failed.group(1)) >= int(tag.removeprefix("step-"))
    print("\n" + "\n".join(line for line in text.splitlines() if "mttt-slurm" in line))
    job_id, log = across_two_nodes(two_nodes, cache, profile, run, steps)  # the same command again
    assert wait_done(two_nodes, job_id, log)["JobState"] == "COMPLETED", log.read_text()
    assert f"at step {int(tag.removeprefix('step-'))}" in node_logs(run, job_id, 0)[0].read_text()


def test_a_data_shard_array_spreads_over_both_nodes_and_merges_to_a_local_run(two_nodes, profile, tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok")
    inputs = [str(p) for p in write_corpus(tmp_path / "in", files=4)]
    common = ["--tokenizer", tokenizer.info().path, "--seq-len", "64", "--val-fraction", "0.1", "--input", *inputs]
    assert main(["data", "shard", "--output", str(tmp_path / "local"), "--quiet", *common]) == 0
    out = tmp_path / "slurm"
    array_id, merge_id = launch(two_nodes, {}, "data-shard", "--array", "2", "--profile", profile, "--time", "10",
                                "--", "--output", str(out), *common)
    logs = out / "slurm" / "logs"
    nodes = set()
    for task in (0, 1):
        info = wait_done(two_nodes, f"{array_id}_{task}", logs / f"mttt-data-shard-{array_id}-{task}.out")
        assert info["JobState"] == "COMPLETED", info
        nodes.add(info["NodeList"])
    assert nodes == set(two_nodes.nodes), nodes
    assert wait_done(two_nodes, merge_id, logs / f"mttt-data-shard-merge-{merge_id}.out")["JobState"] == "COMPLETED"
    local, merged = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "local", out))
    assert merged == local
    assert [s["sha256"] for s in merged["shards"]["train"]] == [s["sha256"] for s in local["shards"]["train"]]
    shutil.rmtree(out)
