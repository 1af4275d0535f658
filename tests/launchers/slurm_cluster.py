"""A one-machine SLURM cluster for the launcher tests: munged, slurmctld and slurmd started from
a private directory (own munge socket, ports, state and logs), and stopped again by their pids.
two_node_cluster.py builds a two-node one from the same parts."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")

SLURM_CONF = """\
ClusterName=mttt-test
SlurmctldHost={host}({address})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=10
MinJobAge=600
{nodes}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def missing_reason() -> str | None:
    """Why no cluster can be had here (None: SLURM is installed, or root with apt-get can install it)."""
    if all(shutil.which(d) for d in DAEMONS):
        return None if os.geteuid() == 0 else "SLURM's daemons must run as root here"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed and cannot be (installing needs root and apt-get)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    partition: str = "debug"
    processes: list = field(default_factory=list)
    prefix: tuple[str, ...] = ()
    """What client commands run under (the head node's network namespace on two nodes)."""
    teardown: list = field(default_factory=list)
    """Callables that undo what the cluster set up beside its daemons, run after they stop."""
    munge_socket: Path | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    """Node name -> its network namespace (the two-node cluster's)."""

    @property
    def env(self) -> dict:
        """The environment the SLURM client commands need (jobs inherit it)."""
        return os.environ | {"SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.prefix, *command], env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {out.returncode}: {out.stderr}")
        return out

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def stop(self) -> None:
        """Stops the daemons this cluster started (by their pids), then removes its directory."""
        for proc in reversed(self.processes):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for undo in reversed(self.teardown):
            undo()
        shutil.rmtree(self.root, ignore_errors=True)


def _munge(root: Path) -> tuple[subprocess.Popen, Path]:
    """munged as user munge, on a private socket with a copy of the installed key."""
    directory = root / "munge"
    directory.mkdir()
    directory.chmod(0o755)  # munged wants its socket directory searchable by all
    key = directory / "munge.key"
    shutil.copy("/etc/munge/munge.key", key)
    key.chmod(0o400)
    shutil.chown(key, "munge", "munge")
    shutil.chown(directory, "munge", "munge")
    sock = directory / "munge.socket"
    proc = subprocess.Popen(["munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
                             f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
                             f"--seed-file={directory}/munged.seed"], user="munge", group="munge",
                            stdout=subprocess.DEVNULL, stderr=_log(root, "munged"))
    proc.stderr_path = root / "munged.stderr"
    _wait(lambda: sock.exists(), proc, "munged", 20)
    return proc, sock


def _log(root: Path, name: str):
    return open(root / f"{name}.stderr", "w")


def _wait(ready, proc: subprocess.Popen, name: str, timeout: float) -> None:
    """Until ready(); a daemon that exits meanwhile raises with its stderr (ROOT/NAME.stderr)."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}: {Path(proc.stderr_path).read_text()}")
        if time.time() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout} s")
        time.sleep(0.2)


def start_daemon(cluster: Cluster, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
    """A daemon in the foreground, its stderr in ROOT/NAME.stderr, stopped with the cluster."""
    proc = subprocess.Popen(command, env=env or cluster.env, stdout=subprocess.DEVNULL, stderr=_log(cluster.root, name))
    proc.stderr_path = cluster.root / f"{name}.stderr"
    cluster.processes.append(proc)
    return proc


def new_cluster() -> Cluster:
    """SLURM installed if needed (scripts/install_slurm.sh), a private directory and its munged."""
    subprocess.run([str(REPO / "scripts" / "install_slurm.sh")], check=True)
    root = Path(tempfile.mkdtemp(prefix="mttt-slurm-"))
    root.chmod(0o755)  # munged checks that the directories above its socket are not writable by others
    cluster = Cluster(root, root / "slurm.conf")
    try:
        munged, sock = _munge(root)
        cluster.processes.append(munged)
        (root / "state").mkdir()
        (root / "spool").mkdir()
    except BaseException:
        cluster.stop()
        raise
    cluster.munge_socket = sock
    return cluster


def write_conf(cluster: Cluster, head: str, address: str, nodes: dict[str, str]) -> None:
    """slurm.conf for `nodes` (name -> address, each with every CPU of this machine), the
    controller on `head` at `address`."""
    lines = "\n".join(f"NodeName={name} NodeAddr={addr} CPUs={os.cpu_count()} State=UNKNOWN"
                      for name, addr in nodes.items())
    root = cluster.root
    cluster.conf.write_text(SLURM_CONF.format(
        host=head, address=address, ctld_port=free_port(), slurmd_port=free_port(), munge_socket=cluster.munge_socket,
        state=root / "state", spool=root / "spool", root=root, nodes=lines, node_names=",".join(nodes)))


def wait_idle(cluster: Cluster, nodes: int) -> None:
    """Until sinfo shows `nodes` idle nodes (a slurmd that exits meanwhile raises)."""
    _wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split().count("idle") == nodes,
          cluster.processes[-1], "slurmd", 60)


def start_cluster() -> Cluster:
    """A one-node cluster on this machine's host name and loopback address."""
    cluster = new_cluster()
    try:
        host = socket.gethostname()
        write_conf(cluster, host, "127.0.0.1", {host: "127.0.0.1"})
        (cluster.root / "spool" / host).mkdir()
        for daemon in ("slurmctld", "slurmd"):
            start_daemon(cluster, daemon, [daemon, "-D", "-f", str(cluster.conf)])
        wait_idle(cluster, 1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
