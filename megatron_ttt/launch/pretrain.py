"""`mttt launch pretrain`: the resolved config and sbatch script go into RUN/slurm/, then sbatch."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_ttt.config import PretrainConfig, to_dict
from megatron_ttt.config.loading import check_world_size
from megatron_ttt.config.model import model_differences
from megatron_ttt.errors import UserInputError
from megatron_ttt.launch.job import SlurmJob, check_job
from megatron_ttt.launch.profile import Profile
from megatron_ttt.launch.render import render_pretrain
from megatron_ttt.launch.submit import sbatch


@dataclass
class PretrainLaunch:
    script: Path
    """RUN/slurm/pretrain.sbatch."""
    text: str
    """The rendered script."""
    config_path: Path
    """RUN/slurm/config.yaml: the config every start and restart of the job trains with."""
    config: dict
    """That config as a dict."""


def check_run_dir(run_dir: Path, config: dict) -> None:
    """A run directory holding another model is refused (its checkpoints would be resumed); the
    same model continues there with the new config, as `mttt pretrain --resume auto` would."""
    for existing in (run_dir / "slurm" / "config.yaml", run_dir / "config.yaml"):
        if existing.exists():
            written = yaml.safe_load(existing.read_text()) or {}
            differ = model_differences({"model": written.get("model", {})}, config)
            if differ:
                raise UserInputError(f"{run_dir} already holds a run of another model ({existing}): "
                                     + "; ".join(differ) + ". Use its model settings to continue it, or another run_dir")


def prepare(config: PretrainConfig, job: SlurmJob, profile: Profile) -> PretrainLaunch:
    """The job's files, once the config fits its nodes x ranks (TP x CP dividing them, the global
    batch whole over the data-parallel rest): a layout that cannot start is refused here, not
    after the job has waited in the queue."""
    check_job(job)
    check_world_size(config, job.nodes * job.procs_per_node)
    run_dir = Path(config.run_dir).resolve()
    config.run_dir = str(run_dir)  # the job may start in another directory
    values = to_dict(config)
    check_run_dir(run_dir, values)
    config_path = run_dir / "slurm" / "config.yaml"
    text = render_pretrain(job, profile, run_dir, config_path, config.train.steps)
    return PretrainLaunch(run_dir / "slurm" / "pretrain.sbatch", text, config_path, values)


def submit(launch: PretrainLaunch) -> str:
    """Writes the config and script (logs go to RUN/slurm/logs/) and submits; the job id."""
    (launch.script.parent / "logs").mkdir(parents=True, exist_ok=True)
    launch.config_path.write_text(yaml.safe_dump(launch.config, sort_keys=False))
    launch.script.write_text(launch.text)
    return sbatch(launch.script)
