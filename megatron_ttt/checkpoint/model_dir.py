"""A model checkpoint directory: `model_config.json` and the weights as a megatron-core
dist_checkpointing directory `model/` (so it loads at any tensor-parallel size)."""

import json
import os
import shutil
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig, megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel

CONFIG_FILE = "model_config.json"
WEIGHTS_DIR = "model"


class CheckpointError(UserInputError):
    pass


def read_model_config(directory: Path) -> TTTModelConfig:
    path = directory / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{directory} is not a model checkpoint: it has no {CONFIG_FILE}")
    return TTTModelConfig(**json.loads(path.read_text()))


def build_model(cfg: TTTModelConfig, params_dtype: torch.dtype = torch.float32,
                sequence_parallel: bool = False) -> TTTLanguageModel:
    """The model at the current tensor-parallel size (parallel state must be initialized)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return TTTLanguageModel(megatron_config(cfg, tp, sequence_parallel, params_dtype), cfg)


def write_weights(model: TTTLanguageModel, directory: Path) -> None:
    """The model's weights as a dist_checkpointing directory (created here; its parent must exist)."""
    if torch.distributed.get_rank() == 0:
        directory.mkdir()
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(directory))
    torch.distributed.barrier()


def read_weights(model: TTTLanguageModel, directory: Path) -> None:
    """Load a dist_checkpointing directory of weights into the model, at its tensor-parallel size."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory.parent} has no {directory.name}/ directory of weights")
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(directory)))


def write_model_config(cfg: TTTModelConfig, directory: Path) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")


def save_model(model: TTTLanguageModel, directory: Path) -> None:
    """Write the checkpoint to `directory` (which must not exist) in a temporary sibling, renamed
    when complete: a crash leaves no half-written checkpoint under the final name."""
    if directory.exists():
        raise CheckpointError(f"{directory} already exists; choose a new destination")
    tmp = directory.with_name(f".{directory.name}.partial")
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_model_config(model.ttt, tmp)
    write_weights(model, tmp / WEIGHTS_DIR)
    if rank0:
        os.replace(tmp, directory)
    torch.distributed.barrier()


def load_model(directory: Path, params_dtype: torch.dtype = torch.float32) -> TTTLanguageModel:
    """The checkpoint's model at the current tensor-parallel size."""
    model = build_model(read_model_config(directory), params_dtype)
    read_weights(model, directory / WEIGHTS_DIR)
    return model
