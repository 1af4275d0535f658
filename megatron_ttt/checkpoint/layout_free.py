"""The layout-free part of a training checkpoint: what resumes at another TP, DP or ZeRO stage.

DeepSpeed's own files hold the weights and Adam's moments cut by the layout that wrote them (TP
rank, DP rank, ZeRO partition). Beside them each checkpoint also holds

    model_config.json, model/        the fp32 (master) weights: the checkpoint is a model directory
    optimizer/exp_avg/               Adam's first moments, in the same sharded layout as the weights
    optimizer/exp_avg_sq/            Adam's second moments
    optimizer/momentum_buffer/       Muon's momentum (runs with optimizer.name muon only)
    trainer_state.json               step, Adam's step count, loader position, the writing layout

Each of the three tensor directories is a megatron-core dist_checkpointing directory of the
model's `sharded_state_dict` (every tensor by its global shape, fused weights by component), so
it loads at any TP size, and every DP rank then takes its ZeRO partition from the whole tensors.
This module is the format; where the tensors come from and go to inside DeepSpeed's optimizers is
training/zero_state.py's business.
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_ttt.atomic import write_atomic
from megatron_ttt.checkpoint.model_dir import WEIGHTS_DIR, read_weights, write_model_config, write_weights
from megatron_ttt.checkpoint.run_dir import MODEL_CONFIG, CheckpointError
from megatron_ttt.models.build import build_model
from megatron_ttt.models.language_model import TTTLanguageModel

MOMENTS = ("exp_avg", "exp_avg_sq")
TRAINER_STATE = "trainer_state.json"
PARTS = ((None, WEIGHTS_DIR), *((key, f"optimizer/{key}") for key in MOMENTS))
"""(what, directory): the fp32 weights (None), then each Adam moment."""
WEIGHTS = PARTS[:1]
"""The weights alone: all a model directory holds."""
MUON_PART = ("momentum_buffer", "optimizer/momentum_buffer")
"""Muon's momentum of the hidden matrices (zeros for the other parameters, like Adam's moments of
the hidden matrices in a Muon run)."""

WholeTensor = Callable[[str | None, str], torch.Tensor]
"""(part, parameter name) -> this TP rank's whole fp32 tensor of that parameter's weight (part
None) or Adam moment (part "exp_avg" / "exp_avg_sq")."""


def present(directory: Path) -> bool:
    """Whether a checkpoint holds the layout-free part (checkpoints of older versions do not)."""
    return all((directory / p).exists() for p in (MODEL_CONFIG, TRAINER_STATE, *(sub for _, sub in PARTS)))


def check_present(directory: Path, why: str) -> None:
    if not present(directory):
        raise CheckpointError(f"{directory} has no layout-free weights and optimizer state (model/, optimizer/, "
                              f"{TRAINER_STATE}): it was written by an older version, so {why}. Resume it "
                              "at the layout that wrote it; its next checkpoint will have them")


def read_trainer_state(directory: Path) -> dict:
    return json.loads((directory / TRAINER_STATE).read_text())


def carrier(model: TTTLanguageModel) -> TTTLanguageModel:
    """A plain copy of the model at this TP size, to carry tensors into and out of
    dist_checkpointing: allocated only (the caller fills every value), so building it draws
    nothing from the random streams a resumed run restores."""
    return build_model(model.ttt, model.pg_collection)


@torch.no_grad()
def write(directory: Path, model: TTTLanguageModel, whole: WholeTensor, trainer_state: dict,
          muon: bool = False) -> None:
    """Write the layout-free part into `directory` (an existing, not yet published checkpoint),
    with Muon's momentum where `muon`. Collective: every rank calls it, each giving its TP rank's
    whole tensors through `whole`."""
    rank0 = torch.distributed.get_rank() == 0
    twin = carrier(model)
    if rank0:
        write_model_config(model.ttt, directory)
        (directory / "optimizer").mkdir()
    for part, sub in PARTS + ((MUON_PART,) if muon else ()):
        for name, p in twin.named_parameters():
            p.copy_(whole(part, name).reshape(p.shape))
        write_weights(twin, directory / sub)
    if rank0:
        write_atomic(directory / TRAINER_STATE, json.dumps(trainer_state, indent=1) + "\n")
    torch.distributed.barrier()


@torch.no_grad()
def read(directory: Path, model: TTTLanguageModel, receive: Callable[[str | None, str, torch.Tensor], None],
         parts: tuple = PARTS) -> None:
    """Each of `parts` at this TP size: `receive(part, parameter name, whole tensor)` for each
    weight, then (all parts) each Adam moment and Muon's momentum where present (the trainer
    state: read_trainer_state)."""
    twin = carrier(model)
    if parts == PARTS and (directory / MUON_PART[1]).exists():
        parts = (*PARTS, MUON_PART)
    for part, sub in parts:
        read_weights(twin, directory / sub)
        for name, p in twin.named_parameters():
            receive(part, name, p.detach())
