"""Filling the sbatch templates of megatron_ttt.launchers: `{{name}}` placeholders, every one of
which must be given (a missing or unused value is a bug, not a blank line in a job script)."""

import re
import shlex
import sys
from importlib import resources

from megatron_ttt.checkpoint.run_dir import latest_pointer, step_tag
from megatron_ttt.launch.job import SlurmJob
from megatron_ttt.launch.profile import Profile

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: dict[str, object]) -> str:
    text = (resources.files("megatron_ttt.launchers") / "templates" / template).read_text()
    wanted = set(PLACEHOLDER.findall(text))
    if wanted != set(values):
        raise KeyError(f"{template}: placeholders {sorted(wanted)} but values for {sorted(values)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def sbatch_options(job: SlurmJob, profile: Profile, per_node_gpus: bool) -> str:
    """The #SBATCH lines that depend on the job and the profile (GPUs only where the profile says so)."""
    options = [f"--{key}={value}" for key, value in
               (("partition", job.partition), ("time", job.time), ("account", job.account)) if value]
    if per_node_gpus and profile.gpus:
        options.append(f"--gpus-per-node={job.procs_per_node}")
    if profile.cpus_per_task:
        options.append(f"--cpus-per-task={profile.cpus_per_task}")
    options += profile.sbatch_options
    return "\n".join(f"#SBATCH {o}" for o in options)


def environment_block(profile: Profile) -> str:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in profile.environment.items()]
    return "\n".join(lines) or "# (none)"


def step_prefix(profile: Profile, srun: bool = True) -> str:
    """What goes before the job's command: srun options (for an srun line), then the container wrapper."""
    words = [*(profile.srun_options if srun else ()), profile.wrapper.strip()]
    return "".join(f"{w} " for w in words if w)


def job_values(job: SlurmJob, profile: Profile, log_dir, per_node_gpus: bool) -> dict[str, object]:
    """The placeholders every template has: job name, logs, sbatch options, setup, python."""
    return {"profile": profile.name, "job_name": job.job_name, "log_dir": shlex.quote(str(log_dir)),
            "sbatch_options": sbatch_options(job, profile, per_node_gpus),
            "setup": profile.setup.strip() or "# (none)",
            "python": shlex.quote(profile.python or sys.executable)}


def render_pretrain(job: SlurmJob, profile: Profile, run_dir, config_path, total_steps: int) -> str:
    return fill("pretrain.sbatch", job_values(job, profile, run_dir / "slurm" / "logs", True) | {
        "nodes": job.nodes, "procs_per_node": job.procs_per_node, "grace_seconds": job.grace_seconds,
        "port": job.port, "environment": environment_block(profile), "step_prefix": step_prefix(profile),
        "config": shlex.quote(str(config_path)), "run_dir": run_dir, "total_steps": total_steps,
        "latest_pointer": latest_pointer(run_dir), "final_tag": step_tag(total_steps)})


def render_data_shard(job: SlurmJob, profile: Profile, output, shard_args: list[str], num_tasks: int) -> str:
    return fill("data_shard.sbatch", job_values(job, profile, output / "slurm" / "logs", False) | {
        "wrapper": step_prefix(profile, srun=False), "num_tasks": num_tasks, "last_task": num_tasks - 1, "shard_args": shlex.join(shard_args)})


def render_merge(job: SlurmJob, profile: Profile, output) -> str:
    return fill("merge_manifests.sbatch", job_values(job, profile, output / "slurm" / "logs", False) | {
        "wrapper": step_prefix(profile, srun=False), "output": shlex.quote(str(output))})
