"""`mttt launch data-shard`: `mttt data shard` as a job array (array task I shards input slice I)
plus a merge job that runs once every array task succeeded (--dependency=afterok)."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from megatron_ttt.errors import UserInputError
from megatron_ttt.launch.job import SlurmJob, check_job
from megatron_ttt.launch.profile import Profile
from megatron_ttt.launch.render import render_data_shard, render_merge
from megatron_ttt.launch.submit import sbatch


@dataclass
class ShardLaunch:
    output: Path
    """The dataset directory (--output of `mttt data shard`)."""
    array_script: Path
    """OUTPUT/slurm/data-shard.sbatch."""
    array_text: str
    """The rendered array script."""
    merge_script: Path
    """OUTPUT/slurm/merge-manifests.sbatch."""
    merge_text: str
    """The rendered merge script."""


def _shard_options(shard_args: list[str]) -> argparse.Namespace:
    """Parses SHARD_ARGS as `mttt data shard` would, so mistakes show before anything is queued."""
    from megatron_ttt.data_prep.cli import add_data_parser

    parser = argparse.ArgumentParser(prog="mttt launch data-shard ... --")
    add_data_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "shard", *shard_args])
    if args.task_index is not None or args.num_tasks is not None:
        raise UserInputError("--task-index/--num-tasks are set per array task; give --array N instead")
    return args


def _absolute(shard_args: list[str], options: argparse.Namespace) -> list[str]:
    """The arguments with --output, --tokenizer and --input as absolute paths (jobs start elsewhere)."""
    out, paths = [], None
    for arg in shard_args:
        if arg in ("--output", "--tokenizer", "--input"):
            paths = arg
        elif arg.startswith("-"):
            paths = None
        elif paths:
            arg = str(Path(arg).resolve())
            paths = paths if paths == "--input" else None
        out.append(arg)
    return out


def prepare(job: SlurmJob, profile: Profile, array: int, shard_args: list[str]) -> ShardLaunch:
    check_job(job)
    if array < 1:
        raise UserInputError(f"--array {array}: at least 1 array task is needed")
    options = _shard_options(shard_args)
    output = Path(options.output).resolve()
    array_text = render_data_shard(job, profile, output, _absolute(shard_args, options), array)
    merge_job = SlurmJob(**{**job.__dict__, "job_name": f"{job.job_name}-merge"})
    return ShardLaunch(output, output / "slurm" / "data-shard.sbatch", array_text,
                       output / "slurm" / "merge-manifests.sbatch", render_merge(merge_job, profile, output))


def submit(launch: ShardLaunch) -> tuple[str, str]:
    """Writes both scripts and submits them; the array's and the merge job's ids."""
    (launch.array_script.parent / "logs").mkdir(parents=True, exist_ok=True)
    launch.array_script.write_text(launch.array_text)
    launch.merge_script.write_text(launch.merge_text)
    array_id = sbatch(launch.array_script)
    return array_id, sbatch(launch.merge_script, [f"--dependency=afterok:{array_id}", "--kill-on-invalid-dep=yes"])
