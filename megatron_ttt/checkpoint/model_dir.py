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


def build_model(cfg: TTTModelConfig, params_dtype: torch.dtype = torch.float32) -> TTTLanguageModel:
    """The model at the current tensor-parallel size (parallel state must be initialized)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return TTTLanguageModel(megatron_config(cfg, tp, params_dtype=params_dtype), cfg)


def save_model(model: TTTLanguageModel, directory: Path) -> None:
    """Write the checkpoint to `directory` (which must not exist) in a temporary sibling, renamed
    when complete: a crash leaves no half-written checkpoint under the final name."""
    if directory.exists():
        raise CheckpointError(f"{directory} already exists; choose a new destination")
    tmp = directory.with_name(f".{directory.name}.partial")
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / WEIGHTS_DIR).mkdir(parents=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(model.ttt.to_dict(), indent=1) + "\n")
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp / WEIGHTS_DIR))
    torch.distributed.barrier()
    if rank0:
        os.replace(tmp, directory)
    torch.distributed.barrier()


def load_model(directory: Path, params_dtype: torch.dtype = torch.float32) -> TTTLanguageModel:
    """The checkpoint's model at the current tensor-parallel size."""
    model = build_model(read_model_config(directory), params_dtype)
    weights = directory / WEIGHTS_DIR
    if not weights.is_dir():
        raise CheckpointError(f"{directory} has no {WEIGHTS_DIR}/ directory of weights")
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(weights)))
    return model
