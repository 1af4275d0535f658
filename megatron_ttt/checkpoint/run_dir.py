"""The run directory's layout, known here and nowhere else (the trainer, the converter, eval, the
SLURM renderer and its sbatch template all ask this module):

    RUN/checkpoints/step-NNNNNNNN/   one training checkpoint per saved step (a model directory too)
    RUN/checkpoints/latest           the tag of the newest complete one (DeepSpeed's pointer format)
    RUN/init_from.json               where the first weights came from (a run with train.init_from)

and which directories the commands that read a model accept: a model directory, a training
checkpoint, or a run directory (or its checkpoints/ folder), which stands for its latest
checkpoint. Plain Python, so `mttt launch` renders without importing torch.
"""

import json
from pathlib import Path

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_PREFIX = "step-"
MODEL_CONFIG = "model_config.json"
"""What makes a directory a model directory (model_dir.py writes it)."""
WEIGHTS_DIR = "model"
"""The model directory's weights (a dist_checkpointing directory)."""
RUN_CONFIG = "run_config.json"
"""The resolved pretraining config inside each training checkpoint."""
TOKENIZER_FILE = "tokenizer.model"
"""The sentencepiece model the model was trained with, copied into its checkpoints and the model
directories converted from them, so eval and generate find it without being told."""
INIT_FROM = "init_from.json"
"""In a run directory started from another model's weights (train.init_from): where they came from."""
CHECKSUMS = "checksums.json"
"""Every other file's size and CRC-32, in each checkpoint (checksums.py)."""


class CheckpointError(UserInputError):
    pass


def read_model_config(directory: Path) -> TTTModelConfig:
    """A model directory's or checkpoint's model_config.json (torch-free: `mttt plan` reads it too)."""
    path = directory / MODEL_CONFIG
    if not path.exists():
        raise CheckpointError(f"{directory} is not a model checkpoint: it has no {MODEL_CONFIG}")
    try:
        return TTTModelConfig.from_dict(json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid model config: {exc}") from None


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def latest_pointer(run_dir: Path) -> Path:
    return checkpoints_dir(run_dir) / LATEST


def step_tag(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def saved_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint, oldest first."""
    return sorted((int(p.name[len(STEP_PREFIX):]), p) for p in checkpoints_dir(run_dir).glob(f"{STEP_PREFIX}*")
                  if p.is_dir())


def latest_tag(run_dir: Path) -> str | None:
    """The newest complete checkpoint's tag; None before the first."""
    pointer = latest_pointer(run_dir)
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    if not (checkpoints_dir(run_dir) / tag).is_dir():
        raise CheckpointError(f"{pointer} names {tag}, which does not exist; point it at a complete checkpoint")
    return tag


def resolve_model_source(path: Path) -> Path:
    """The directory holding the model that `path` names: a model directory or training checkpoint
    as it is; a run directory or its checkpoints/ folder: the latest checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist (expected a model directory, a training checkpoint or a run "
                              "directory)")
    run_dir = path.parent if path.name == CHECKPOINTS else path
    if latest_pointer(run_dir).is_file():
        path = checkpoints_dir(run_dir) / latest_tag(run_dir)
    if not (path / MODEL_CONFIG).exists() and not (path / CHECKSUMS).exists():  # checksums name what is missing
        if (path / RUN_CONFIG).exists():
            raise CheckpointError(f"{path} is a training checkpoint written by an older version, without the "
                                  "layout-free weights (model_config.json, model/) that evaluation and conversion "
                                  "read; resume it once at the layout that wrote it and use its next checkpoint")
        raise CheckpointError(f"{path} is not a model directory, a training checkpoint or a run directory "
                              f"(no {MODEL_CONFIG}, no {CHECKPOINTS}/{LATEST})")
    return path
