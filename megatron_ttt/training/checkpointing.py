"""Training checkpoints: DeepSpeed's engine state plus ours (step, loader, RNG, config), and the
layout-free weights and optimizer state (checkpoint/layout_free.py) that resume at another layout.

Each checkpoint (checkpoint/run_dir.py names the paths) is written under a temporary name,
sealed with every file's checksum (checkpoint/checksums.py) and renamed when every rank has
finished; the `latest` pointer is replaced after that, so a crash mid-write leaves the previous
checkpoint as the latest complete one. Resuming checks the checksums and passes over a damaged
checkpoint to the newest one that verifies.

Resuming at the writing layout (TP, DP, ZeRO stage, dtype) loads DeepSpeed's files: bitwise
exact, RNG streams included. At another layout the layout-free part is loaded instead; RNG
streams are per rank and have no counterpart there, so they stay as `train.seed` set them.
"""

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from megatron_ttt.atomic import write_atomic, written_atomically
from megatron_ttt.checkpoint import layout_free, sealing
from megatron_ttt.checkpoint.checksums import summary
from megatron_ttt.checkpoint.model_dir import copy_tokenizer
from megatron_ttt.checkpoint.run_dir import (
    RUN_CONFIG,
    checkpoints_dir,
    latest_pointer,
    latest_tag,
    read_model_config,
    saved_steps,
    step_tag,
)
from megatron_ttt.config.model import model_differences
from megatron_ttt.errors import UserInputError
from megatron_ttt.parallel.gloo_threads import single_threaded_collectives
from megatron_ttt.training import zero_state
from megatron_ttt.training.muon import Muon


class ResumeError(UserInputError):
    pass


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "tracker": get_cuda_rng_tracker().get_states()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _all_finite(module: torch.nn.Module) -> bool:
    """Whether every rank's weights are finite (agreed by all ranks, so all stop together)."""
    finite = torch.tensor([float(all(torch.isfinite(p).all() for p in module.parameters()))])
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def save(engine, run_dir: Path, step: int, client_state: dict, keep: int, tokenizer: Path | None,
         muon: Muon | None = None) -> Path:
    """The checkpoint of `step`, with a copy of the `tokenizer` model file (where the run has one)
    and Muon's momentum (where the run has it)."""
    root, tag, rank0 = checkpoints_dir(run_dir), step_tag(step), dist.get_rank() == 0
    if not _all_finite(engine.module):
        raise FloatingPointError(f"step {step}: the weights hold NaN or inf; no checkpoint is written")
    with written_atomically(root / tag, renames=rank0, shared=True) as partial, single_threaded_collectives():
        dist.barrier()
        engine.save_checkpoint(str(root), tag=partial.name, client_state=client_state | {"rng": rng_state()},
                               save_latest=False)
        dist.barrier()
        zero_state.save(engine, partial, {k: client_state[k] for k in ("step", "loader", "layout")}, muon)
        if rank0:
            write_atomic(partial / RUN_CONFIG, json.dumps(client_state["config"], indent=1) + "\n")
            copy_tokenizer(tokenizer, partial)
        sealing.seal(partial)
    if rank0:
        write_atomic(latest_pointer(run_dir), tag)
        _prune(run_dir, step, keep)
    dist.barrier()
    return root / tag


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints up to `step`; never the one just written, never a
    newer one (a run resumed from an older checkpoint leaves those alone)."""
    older = [path for saved, path in saved_steps(run_dir) if saved < step]
    for path in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path)


def saved_config(run_dir: Path, tag: str) -> dict:
    path = checkpoints_dir(run_dir) / tag / RUN_CONFIG
    if not path.exists():
        raise ResumeError(f"{path.parent} has no {RUN_CONFIG}; it is not a complete checkpoint of this trainer")
    return json.loads(path.read_text())


def load(engine, run_dir: Path, tag: str) -> dict:
    with single_threaded_collectives():
        path, client_state = engine.load_checkpoint(str(checkpoints_dir(run_dir)), tag=tag)
    if path is None:
        raise ResumeError(f"DeepSpeed could not load {checkpoints_dir(run_dir) / tag}")
    set_rng_state(client_state["rng"])
    return client_state


LAYOUT_KEYS = ("tensor_parallel", "context_parallel", "data_parallel", "zero_stage", "dtype")
"""What shapes DeepSpeed's files (ZeRO partitions over DP x CP); a change of any of them resumes
from the layout-free part."""


def current_layout(config: dict, groups: ProcessGroupCollection) -> dict:
    """This run's layout, as its process groups split it."""
    return {"tensor_parallel": dist.get_world_size(groups.tp), "context_parallel": dist.get_world_size(groups.cp),
            "data_parallel": dist.get_world_size(groups.dp),
            "zero_stage": config["parallel"]["zero_stage"], "dtype": config["train"]["dtype"]}


@dataclass(frozen=True)
class ResumePlan:
    path: Path
    """The checkpoint directory."""
    tag: str
    reshard: bool
    """The layout differs from the writing one: load the layout-free part, not DeepSpeed's files."""
    vocab_size: int | None
    """The checkpoint model's (padded) vocabulary, kept at the new TP size; None: not recorded."""
    config: dict
    """The resolved config the checkpoint's run trained with (its run_config.json)."""


def plan_resume(run_dir: Path, mode: str, requested: dict, layout: dict) -> ResumePlan | None:
    """Which checkpoint to resume and how. mode "auto": the newest that verifies, if any; "none":
    start fresh (refused where checkpoints exist). Refuses another model, and layout changes it
    cannot do. Collective: the ranks share the reading of the checksummed files."""
    latest = latest_tag(run_dir)
    if latest is None:
        return None
    if mode == "none":
        raise ResumeError(f"{run_dir} already holds checkpoints; pass --resume auto to continue it, or choose "
                          "another run_dir")
    path = intact_checkpoint(run_dir, latest)
    tag = path.name
    saved = saved_config(run_dir, tag)
    check_same_model(saved, requested, path)
    check_same_optimizer(saved, requested, path)
    written = saved_layout(path, saved)
    differ = [f"{k}: checkpoint {written[k]!r}, requested {layout[k]!r}" for k in LAYOUT_KEYS
              if written[k] is not None and written[k] != layout[k]]
    if differ:
        layout_free.check_present(path, "it cannot resume at another layout (" + "; ".join(differ) + ")")
    vocab = read_model_config(path).vocab_size if layout_free.present(path) else None
    if vocab is not None and vocab % layout["tensor_parallel"]:
        raise ResumeError(f"{path}: its model's vocabulary of {vocab} does not split over tensor_parallel="
                          f"{layout['tensor_parallel']}; resume at a TP size dividing it")
    return ResumePlan(path, tag, bool(differ), vocab, saved)


def intact_checkpoint(run_dir: Path, latest: str) -> Path:
    """The newest checkpoint up to `latest` whose files match their checksums (every rank agrees),
    warning of each damaged one passed over; one written before checksums is taken as it is."""
    rank0 = dist.get_rank() == 0
    for _, path in reversed(saved_steps(run_dir)):
        if path.name > latest:
            continue  # newer than `latest`: left by a run resumed from an older checkpoint
        found = sealing.damage(path)
        if found is None and rank0:
            print(f"note: {path} carries no checksums (written before they existed); resuming from it unverified",
                  file=sys.stderr, flush=True)
        if not found:
            return path
        if rank0:
            print(f"warning: {path} is damaged: {summary(found)}; it is left as it is and the previous checkpoint "
                  "is tried", file=sys.stderr, flush=True)
    raise ResumeError(f"no checkpoint of {run_dir} verifies (`mttt checkpoint verify {run_dir}` lists what is "
                      "damaged): restore the files, or start over in another run_dir")


def saved_layout(path: Path, saved_config: dict) -> dict:
    """The layout a checkpoint was written at (checkpoints of older versions record only the
    config: their data-parallel size is unknown, given as None; those before context
    parallelism ran at CP 1)."""
    if layout_free.present(path):
        return {"context_parallel": 1} | layout_free.read_trainer_state(path)["layout"]
    return {"tensor_parallel": saved_config["parallel"]["tensor_parallel"], "context_parallel": 1,
            "data_parallel": None,
            "zero_stage": saved_config["parallel"]["zero_stage"], "dtype": saved_config["train"]["dtype"]}


DATA_KEYS = ("manifest", "blend", "seed", "seq_len")
"""The data settings that decide which sample comes next."""


def data_differences(saved: dict, requested: dict) -> list[str]:
    """The data settings a checkpoint's run used that the requested run changes, with both values."""
    before, now = saved["data"], requested["data"]
    return [f"data.{k}: {before[k]!r} there, {now[k]!r} now" for k in DATA_KEYS if k in before and before[k] != now[k]]


def check_same_optimizer(saved: dict, requested: dict, where: Path) -> None:
    """AdamW's and Muon's states differ for the hidden matrices: a run keeps its optimizer."""
    before, now = saved["optimizer"].get("name", "adamw"), requested["optimizer"]["name"]
    if before != now:
        raise ResumeError(f"{where} was trained with optimizer.name={before}, and its optimizer state does not carry "
                          f"over to {now}: resume with optimizer.name={before}, or start a new run_dir")


def check_same_model(saved: dict, requested: dict, where: Path) -> None:
    """The model of a checkpoint must be the run's (the parallel layout may change)."""
    differ = model_differences(saved, requested)
    if differ:
        raise ResumeError(f"{where} was written for another model ({'; '.join(differ)}). Resume with the "
                          "checkpoint's model settings or start a new run_dir")
