"""Submitting `mttt launch` jobs to the test cluster and watching them: states, logs, timestamps."""

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tests.launchers.slurm_cluster import Cluster
from tests.training.runs import FAST, environment, free_port

LOG_LINE = re.compile(r"^\[(\S+Z)\] mttt-slurm: (.*)$", re.M)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


STEPS = ["train.steps=60", "checkpoint.interval=100", "logging.eval_interval=20"]

HOSTILE = "run a'b\"c $(touch {}) `touch {}`"


def hostile_dir(parent: Path) -> tuple[Path, list[Path]]:
    """A path under PARENT whose name holds spaces, both quotes, two commands that create
    PARENT/marker-1 and -2 if a shell runs them, and `100% %j`, a SLURM file name pattern; and
    those markers. Every script that names it must mean exactly this string and run nothing."""
    markers = [parent / "marker-1", parent / "marker-2"]
    return parent / (HOSTILE.format(*markers) + " 100% %j"), markers


def assert_nothing_ran(parent: Path, markers: list[Path]) -> None:
    """No marker exists, and nothing under PARENT (the job's working directory) is named with a
    leading quote, as a path quoted twice (`"'/abs/path'/x.log"`) would make one."""
    assert not [m for m in markers if m.exists()], "a command in a path ran"
    assert not [p for p in parent.rglob("*") if p.name[0] in "'\""], "a path was quoted twice"


def launch(cluster: Cluster, env: dict, *args: str) -> list[str]:
    """Runs `mttt launch ARGS` against the cluster (on its head node); the submitted job ids, in order."""
    out = subprocess.run([*cluster.prefix, sys.executable, "-m", "megatron_ttt.cli", "launch", *args],
                         env=cluster.env | env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return re.findall(r"job (\d+)", out.stdout)


def wait_for(condition, what: str, timeout: float = 300, interval: float = 0.1):
    """Polls condition() until it returns something true; fails naming what was awaited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_done(cluster: Cluster, job_id: str, log: Path | None = None, timeout: float = 400) -> dict:
    """Until the job left the queue for good (COMPLETED, FAILED, CANCELLED...); its last state."""
    def done():
        info = cluster.job(job_id)
        return info if info["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                                "REQUEUED", "SUSPENDED") else None
    try:
        return wait_for(done, f"job {job_id} to end", timeout, 0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text() if log and log.exists() else ''}") from None


def events(log: Path) -> list[tuple[str, str]]:
    """(timestamp, message) of the batch script's own log lines."""
    return LOG_LINE.findall(log.read_text()) if log.exists() else []


def event_time(log: Path, pattern: str) -> str | None:
    return next((ts for ts, message in events(log) if re.search(pattern, message)), None)


def submit(cluster: Cluster, cache: Path, run: Path, extra=(), nodes: int = 1, procs_per_node: int = 2,
           profile: str = "cpu-test", time_limit: str = "20:00", grace: int = 300,
           job_name: str | None = None) -> tuple[str, Path]:
    """`mttt launch pretrain` of the tiny test run (STEPS, then `extra`), named `job_name` (default:
    the run directory's name); the job id and its batch log."""
    job_name = job_name or run.name
    (job_id,) = launch(cluster, environment(cache), "pretrain", "--nodes", str(nodes), "--gpus-per-node",
                       str(procs_per_node), "--profile", profile, "--partition", cluster.partition, "--time",
                       time_limit, "--grace", str(grace), "--port", str(free_port()), "--job-name", job_name,
                       f"run_dir={run}", *FAST, *STEPS, *extra)
    return job_id, run / "slurm" / "logs" / f"{job_name}-{job_id}.out"


def assert_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[n] - b[n]).abs().max().item() for n in a if a[n] is not None)
    assert worst <= atol, f"final weights differ by up to {worst}"


def preempt_after_step_3(cluster: Cluster, run: Path, job_id: str, log: Path, timeline: dict) -> int:
    """Once the periodic checkpoint of step 3 exists, USR1 to the job's batch shell; waits until the
    job is requeued; the step whose checkpoint it stopped at."""
    wait_for(lambda: (run / "checkpoints" / "latest").exists(), "the first periodic checkpoint (step 3)")
    timeline["preempt signal sent (scancel --signal=USR1 --batch), after the checkpoint of step 3"] = now()
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    wait_for(lambda: cluster.job(job_id)["Restarts"] == "1" and cluster.job(job_id)["JobState"] == "PENDING",
             f"job {job_id} requeued and pending", timeout=120)
    timeline["seen pending after requeue"] = now()
    stopped = re.search(r"latest checkpoint: step-(\d+)", log.read_text())
    assert stopped and 3 < int(stopped.group(1)) < 60, log.read_text()
    return int(stopped.group(1))


def report_timeline(run: Path, log: Path, timeline: dict, stopped: int, title: str) -> None:
    """Adds the batch script's own events to `timeline`, prints it in order, writes
    RUN/timeline.json, and checks that every event happened."""
    for label, pattern in (("USR1 received by the batch shell", "received USR1"),
                           (f"training stopped after its checkpoint at step {stopped}", "training exited"),
                           ("requeued", "requeueing"), ("restart 1 started", r"restart 1 "), ("finished", "finished")):
        timeline[label] = event_time(log, pattern)
    print(f"\n{title} (UTC):")
    for label, ts in sorted(timeline.items(), key=lambda kv: kv[1]):
        print(f"  {ts}  {label}")
    (run / "timeline.json").write_text(json.dumps(timeline, indent=1))
    assert all(timeline.values()), timeline
