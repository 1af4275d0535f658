"""Cluster profiles: what differs between clusters (modules, containers, NCCL/EFA variables, GPU
requests) lives in a small YAML file that users copy and edit, never in code."""

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from megatron_ttt.errors import UserInputError


@dataclass
class Profile:
    name: str = "cpu-test"
    """Where the profile came from (a bundled name or a file path); named in the rendered script."""
    gpus: bool = False
    """Request --gpus-per-node=G from SLURM (one rank per GPU); false: G CPU processes per node."""
    cpus_per_task: int | None = None
    """#SBATCH --cpus-per-task for each node's task (torchrun and its ranks); null: SLURM's default."""
    sbatch_options: list[str] = field(default_factory=list)
    """Extra #SBATCH options, e.g. --exclusive or --qos=high: one line each, read by sbatch as written
    (its own quotes apply); a line break is refused."""
    srun_options: list[str] = field(default_factory=list)
    """Extra srun options for the training step, e.g. pyxis' --container-image: each item one word,
    quoted for the shell (spaces and quotes in it stay part of it)."""
    setup: str = ""
    """Shell lines run first in every job (module loads, activating an environment, MTTT_CACHE):
    shell code, pasted in as written."""
    environment: dict[str, str] = field(default_factory=dict)
    """Variables exported in the script's NCCL / network block; the values are quoted (no expansion)."""
    wrapper: str = ""
    """A command put before torchrun on every node, e.g. `apptainer exec --nv image.sif`: shell code,
    pasted in as written (quote its paths yourself)."""
    python: str = ""
    """The job's Python (after `setup`), a path or command name quoted as one word; empty: the
    interpreter that ran `mttt launch`."""


def bundled_profiles() -> list[str]:
    folder = resources.files("megatron_ttt.launchers") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, str]:
    """The profile's text and the name to report: a YAML file path, or a bundled profile's name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            return path.read_text(), str(path)
        except OSError as exc:
            raise UserInputError(f"cannot read profile {path}: {exc}") from None
    if name_or_path not in bundled_profiles():
        raise UserInputError(f"unknown profile {name_or_path!r}: give a YAML file or one of "
                             f"{', '.join(bundled_profiles())} (launchers/profiles/)")
    return (resources.files("megatron_ttt.launchers") / "profiles" / f"{name_or_path}.yaml").read_text(), name_or_path


def _check_types(values: dict, where: str) -> None:
    kinds = {"gpus": bool, "cpus_per_task": (int, type(None)), "sbatch_options": list, "srun_options": list,
             "setup": str, "environment": dict, "wrapper": str, "python": str}
    for key, value in values.items():
        if key not in kinds:
            raise UserInputError(f"{where}: unknown key {key!r} (known: {', '.join(kinds)})")
        if not isinstance(value, kinds[key]) or (key == "cpus_per_task" and value is not None and value < 1):
            raise UserInputError(f"{where}: {key} = {value!r} is not a valid value (see launchers/profiles/cpu-test.yaml)")
    for key, value in values.get("environment", {}).items():
        if not str(key).isidentifier() or isinstance(value, (dict, list)):
            raise UserInputError(f"{where}: environment.{key} must be a variable name with a scalar value")


def load_profile(name_or_path: str) -> Profile:
    text, name = _read(name_or_path)
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(f"profile {name} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise UserInputError(f"profile {name}: the top level must be a mapping of keys")
    _check_types(values, f"profile {name}")
    values["environment"] = {str(k): str(v) for k, v in values.get("environment", {}).items()}
    values["sbatch_options"] = [str(o) for o in values.get("sbatch_options", [])]
    values["srun_options"] = [str(o) for o in values.get("srun_options", [])]
    return dataclasses.replace(Profile(name=name), **values)
