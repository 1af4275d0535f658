"""A model checkpoint directory: `model_config.json` and the weights as a megatron-core
dist_checkpointing directory `model/` (so it loads at any tensor-parallel size)."""

import json
import shutil
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.atomic import written_atomically
from megatron_ttt.checkpoint import torch_dist
from megatron_ttt.checkpoint.run_dir import (MODEL_CONFIG, TOKENIZER_FILE, WEIGHTS_DIR, CheckpointError,
                                             read_model_config)
from megatron_ttt.checkpoint.sealing import seal
from megatron_ttt.models.build import build_model
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.parallel.gloo_threads import single_threaded_collectives
from megatron_ttt.run_options import InnerLoopOptions


def write_weights(model: TTTLanguageModel, directory: Path) -> None:
    """The model's weights as a dist_checkpointing directory (created here; its parent must exist)."""
    if torch.distributed.get_rank() == 0:
        directory.mkdir()
    torch.distributed.barrier()
    with single_threaded_collectives():
        torch_dist.save(model.sharded_state_dict(), directory)
    torch.distributed.barrier()


def read_weights(model: TTTLanguageModel, directory: Path) -> None:
    """Load a dist_checkpointing directory of weights into the model, at its tensor-parallel size."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory.parent} has no {directory.name}/ directory of weights")
    with single_threaded_collectives():
        loaded = dist_checkpointing.load(model.sharded_state_dict(), str(directory))
    model.load_state_dict(loaded)


def load_weights(model: TTTLanguageModel, directory: Path) -> None:
    """The weights of a model directory or training checkpoint (both hold model/) into a model of
    the same config built at any tensor-parallel size, e.g. a training model before its optimizer
    takes it over. Collective over the model's process groups."""
    read_weights(model, directory / WEIGHTS_DIR)


def write_model_config(cfg: TTTModelConfig, directory: Path) -> None:
    (directory / MODEL_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")


def copy_tokenizer(source: Path | None, directory: Path) -> None:
    """The tokenizer model file `source` (if any) into a checkpoint or model directory."""
    if source is not None:
        shutil.copyfile(source, directory / TOKENIZER_FILE)


def tokenizer_of(directory: Path) -> Path | None:
    """The tokenizer a model directory or checkpoint carries, if it carries one."""
    path = directory / TOKENIZER_FILE
    return path if path.is_file() else None


def save_model(model: TTTLanguageModel, directory: Path, tokenizer: Path | None = None) -> None:
    """Write the checkpoint (with a copy of `tokenizer`, the model file, if given) to `directory`
    (which must not exist) under a temporary name, sealed with its checksums and renamed when
    complete. Collective over the process group."""
    if directory.exists():
        raise CheckpointError(f"{directory} already exists; choose a new destination")
    rank0 = torch.distributed.get_rank() == 0
    with written_atomically(directory, renames=rank0, shared=True) as tmp:
        if rank0:
            tmp.mkdir(parents=True)
            write_model_config(model.ttt, tmp)
            copy_tokenizer(tokenizer, tmp)
        write_weights(model, tmp / WEIGHTS_DIR)
        seal(tmp)
    torch.distributed.barrier()


def load_model(directory: Path, groups: ProcessGroupCollection, params_dtype: torch.dtype = torch.float32,
               inner_loop: InnerLoopOptions = InnerLoopOptions()) -> TTTLanguageModel:
    """The checkpoint's model split over `groups` (any TP size), running as `inner_loop` says
    (whatever the run that wrote it used)."""
    model = build_model(read_model_config(directory), groups, inner_loop, params_dtype)
    load_weights(model, directory)
    return model
