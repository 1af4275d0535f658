"""What a SLURM job asks for (nodes, processes, partition, time, account), checked before rendering."""

import re
from dataclasses import dataclass

from megatron_ttt.errors import UserInputError

# SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; matched whole (fullmatch), as `$` would let
# a trailing line break through into the #SBATCH line.
TIME = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})")


@dataclass
class SlurmJob:
    job_name: str = "mttt"
    """#SBATCH --job-name (also names the batch log)."""
    nodes: int = 1
    """Nodes; torchrun runs once on each."""
    procs_per_node: int = 1
    """Ranks per node: GPUs per node (requested from SLURM where the profile says gpus), else CPU processes."""
    partition: str | None = None
    """#SBATCH --partition; None: the cluster's default."""
    time: str | None = None
    """#SBATCH --time, in SLURM's forms (minutes, H:M:S, D-H:M:S...); None: the partition's limit."""
    account: str | None = None
    """#SBATCH --account to charge; None: the user's default."""
    grace_seconds: int = 300
    """USR1 arrives this long before the time limit: enough to finish a step and write a checkpoint."""
    port: int = 29500
    """torchrun's c10d rendezvous port on the head node."""


def check_job(job: SlurmJob) -> None:
    """Raises UserInputError naming the first bad option."""
    if job.nodes < 1:
        raise UserInputError(f"--nodes {job.nodes}: a job needs at least 1 node")
    if job.procs_per_node < 1:
        raise UserInputError(f"--gpus-per-node {job.procs_per_node}: at least 1 process per node is needed")
    if job.time is not None and not TIME.fullmatch(job.time):
        raise UserInputError(f"--time {job.time!r} is not a SLURM time limit (minutes, M:S, H:M:S, D-H, D-H:M or "
                             "D-H:M:S, e.g. 2-00:00:00)")
    if job.grace_seconds < 1:
        raise UserInputError(f"--grace {job.grace_seconds}: the signal must come at least 1 s before the time limit")
    if not 1 <= job.port <= 65535:
        raise UserInputError(f"--port {job.port} is not a TCP port")
    if not re.fullmatch(r"[\w.-]+", job.job_name):
        raise UserInputError(f"--job-name {job.job_name!r}: use letters, digits, '.', '-' and '_'")
