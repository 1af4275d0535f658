"""Filling the sbatch templates of megatron_ttt.launchers: `{{name}}` placeholders, every one of
which must be given (a missing or unused value is a bug, not a blank line in a job script).

Every value from the user reaches the script quoted once, by shlex.quote: bash reads it as that
one word, and so does sbatch in an `#SBATCH` line (it splits those lines itself, with the shell's
quotes, expanding nothing). Paths are assigned to a variable once and used as "$var" after that.
The profile's `setup` and `wrapper` are shell code by design and go in as written; the rendered
script must then pass `bash -n` before anything is written or submitted."""

import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path

from megatron_ttt.checkpoint.run_dir import latest_pointer, step_tag
from megatron_ttt.errors import UserInputError
from megatron_ttt.launch.job import SlurmJob
from megatron_ttt.launch.profile import Profile

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: dict[str, object]) -> str:
    text = (resources.files("megatron_ttt.launchers") / "templates" / template).read_text()
    wanted = set(PLACEHOLDER.findall(text))
    if wanted != set(values):
        raise KeyError(f"{template}: placeholders {sorted(wanted)} but values for {sorted(values)}")
    return check_syntax(PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text), template)


def check_syntax(text: str, template: str) -> str:
    """The rendered script, once `bash -n` accepts it: the profile's setup and wrapper go in as
    shell code, and a mistake there should stop the launch, not the job after its wait in the queue.
    /bin/bash, as the script's first line names it (and not whatever `bash` is on PATH)."""
    out = subprocess.run(["/bin/bash", "-n"], input=text, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserInputError(f"the rendered {template} is not valid bash ({out.stderr.strip()}): check the "
                             "profile's setup and wrapper, which go into the script as shell code")
    return text


def one_line(value: str, field: str) -> str:
    """`value`, refused if it holds a line break: in an #SBATCH line or a comment it would start
    a line of its own, an option or a command nobody wrote."""
    if "\n" in value or "\r" in value:
        raise UserInputError(f"{field} {value!r} holds a line break, which would start a new line in the job "
                             "script: remove it")
    return value


def sbatch_safe(value: str, field: str) -> str:
    """`value`, if an #SBATCH line can carry it: sbatch honours a backslash as an escape even
    inside quotes, and SLURM drops backslashes from log file names (and then expands no %j), so a
    value holding one is refused, as a line break is."""
    if "\\" in one_line(value, field):
        raise UserInputError(f"{field} {value!r} holds a backslash, which SLURM reads as an escape (and removes "
                             "from log file names): use a value without one")
    return value


def log_dir(base: Path) -> Path:
    """Where a job's logs go: BASE/slurm/logs (BASE: the run directory, or the data-shard output)."""
    return base / "slurm" / "logs"


def log_pattern(base: Path, field: str) -> str:
    """The log directory as the start of SLURM's --output file name patterns (in #SBATCH lines
    and srun), quoted once for sbatch and bash alike: SLURM expands %j, %x... there and reads %%
    as one %, so each % of the path is doubled and a directory named `100%j` keeps its name."""
    return shlex.quote(str(log_dir(Path(sbatch_safe(str(base), field)))).replace("%", "%%"))


def sbatch_options(job: SlurmJob, profile: Profile, per_node_gpus: bool) -> str:
    """The #SBATCH lines that depend on the job and the profile (GPUs only where the profile says
    so). The profile's sbatch_options are sbatch's own text, one option per line, as written."""
    options = [f"--{key}={shlex.quote(sbatch_safe(value, f'--{key}'))}" for key, value in
               (("partition", job.partition), ("time", job.time), ("account", job.account)) if value]
    if per_node_gpus and profile.gpus:
        options.append(f"--gpus-per-node={job.procs_per_node}")
    if profile.cpus_per_task:
        options.append(f"--cpus-per-task={profile.cpus_per_task}")
    options += [one_line(o, f"profile {profile.name}: sbatch_options item") for o in profile.sbatch_options]
    return "\n".join(f"#SBATCH {o}" for o in options)


def environment_block(profile: Profile) -> str:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in profile.environment.items()]
    return "\n".join(lines) or "# (none)"


def step_prefix(profile: Profile, srun: bool = True) -> str:
    """What goes before the job's command: srun options (for an srun line), each one word, then
    the container wrapper, which is shell code (a command and its arguments, as the user wrote it)."""
    words = [*(shlex.quote(o) for o in profile.srun_options if srun), profile.wrapper.strip()]
    return "".join(f"{w} " for w in words if w)


def job_values(job: SlurmJob, profile: Profile, base: Path, field: str, per_node_gpus: bool) -> dict[str, object]:
    """The placeholders every template has: job name, logs under BASE (the user's `field`),
    sbatch options, setup, python."""
    return {"profile": one_line(profile.name, "--profile"), "job_name": job.job_name,
            "log_pattern": log_pattern(base, field), "sbatch_options": sbatch_options(job, profile, per_node_gpus),
            "setup": profile.setup.strip() or "# (none)",
            "python": shlex.quote(profile.python or sys.executable)}


def render_pretrain(job: SlurmJob, profile: Profile, run_dir: Path, config_path: Path, total_steps: int) -> str:
    return fill("pretrain.sbatch", job_values(job, profile, run_dir, "run_dir", True) | {
        "nodes": job.nodes, "procs_per_node": job.procs_per_node, "grace_seconds": job.grace_seconds,
        "port": job.port, "environment": environment_block(profile), "step_prefix": step_prefix(profile),
        "config": shlex.quote(str(config_path)), "run_dir": shlex.quote(str(run_dir)), "total_steps": total_steps,
        "log_dir": shlex.quote(str(log_dir(run_dir))),
        "latest_pointer": shlex.quote(str(latest_pointer(run_dir))), "final_tag": shlex.quote(step_tag(total_steps))})


def render_data_shard(job: SlurmJob, profile: Profile, output: Path, shard_args: list[str], num_tasks: int) -> str:
    return fill("data_shard.sbatch", job_values(job, profile, output, "--output", False) | {
        "wrapper": step_prefix(profile, srun=False), "num_tasks": num_tasks, "last_task": num_tasks - 1,
        "shard_args": shlex.join(shard_args)})


def render_merge(job: SlurmJob, profile: Profile, output: Path) -> str:
    return fill("merge_manifests.sbatch", job_values(job, profile, output, "--output", False) | {
        "wrapper": step_prefix(profile, srun=False), "output": shlex.quote(str(output))})
