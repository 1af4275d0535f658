"""The layout-free part of a training checkpoint: what resumes at another TP, DP or ZeRO stage.

DeepSpeed's own files hold the weights and Adam's moments cut by the layout that wrote them (TP
rank, DP rank, ZeRO partition). Beside them each checkpoint also holds

    model_config.json, model/        the fp32 (master) weights: the checkpoint is a model directory
    optimizer/exp_avg/               Adam's first moments, in the same sharded layout as the weights
    optimizer/exp_avg_sq/            Adam's second moments
    trainer_state.json               step, Adam's step count, loader position, the writing layout

Each of the three tensor directories is a megatron-core dist_checkpointing directory of the
model's `sharded_state_dict` (every tensor by its global shape, fused weights by component), so
it loads at any TP size, and every DP rank then takes its ZeRO partition from the whole tensors.
"""

import json
import multiprocessing
from multiprocessing.managers import SyncManager
from pathlib import Path

import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from megatron_ttt.checkpoint.model_dir import (
    CONFIG_FILE,
    WEIGHTS_DIR,
    CheckpointError,
    build_model,
    read_weights,
    write_model_config,
    write_weights,
)
from megatron_ttt.data.manifest import write_atomic
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.training.signals import ignore_stop_signals

MOMENTS = ("exp_avg", "exp_avg_sq")
TRAINER_STATE = "trainer_state.json"


def present(directory: Path) -> bool:
    """Whether a checkpoint holds the layout-free part (checkpoints of older versions do not)."""
    return all((directory / p).exists() for p in (CONFIG_FILE, WEIGHTS_DIR, TRAINER_STATE,
                                                  *(f"optimizer/{k}" for k in MOMENTS)))


def read_trainer_state(directory: Path) -> dict:
    return json.loads((directory / TRAINER_STATE).read_text())


def base_optimizer(optimizer):
    """The torch optimizer that holds Adam's state (DeepSpeed's ZeRO and bf16 wrappers keep it as
    `.optimizer`; without ZeRO in fp32 the engine's optimizer is Adam itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _flat_slice(optimizer, param: torch.nn.Parameter, key: str | None) -> torch.Tensor | None:
    """bf16 without ZeRO (DeepSpeed's FP16_Optimizer in bf16 mode): the parameter's slice of its
    group's flat fp32 master (key None) or of that master's Adam moment; None for other optimizers.
    The flat master holds the group's parameters back to back, in order, unpadded."""
    for group, flat in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups_flat", ())):
        offset = 0
        for p in group:
            if p is param:
                whole = flat if key is None else base_optimizer(optimizer).state[flat][key]
                return whole[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    return None


def _whole(engine, param: torch.nn.Parameter, key: str | None) -> torch.Tensor:
    """This TP rank's whole fp32 tensor of a parameter (key None) or of one of its Adam moments,
    gathered over the data-parallel group where ZeRO or the bf16 optimizer partition it."""
    value = safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
    if value is None:
        value = _flat_slice(engine.optimizer, param, key)
    if value is not None:
        return value
    # fp32 without ZeRO: Adam updates the module's parameters in place.
    return param.detach() if key is None else engine.optimizer.state[param][key]


def _twin(model: TTTLanguageModel) -> TTTLanguageModel:
    """A plain copy of the model at this TP size (values overwritten by the caller), built without
    moving the random streams a resumed run restores."""
    tracker = get_cuda_rng_tracker()
    saved = tracker.get_states()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        twin = build_model(model.ttt)
    tracker.set_states(saved)
    return twin


def _link_fragments(optimizer) -> None:
    """Point each parameter at its slice of Adam's state (ZeRO 1-2 and the bf16 optimizer).
    DeepSpeed links them once, after the first parameter group's first step, when the other
    groups have no state yet; linking again once all have state makes every slice readable."""
    if hasattr(optimizer, "_hp_optimizer_states_linked"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def adam_step(engine) -> int:
    """Adam's step count (its bias correction), the same for every parameter group."""
    state = base_optimizer(engine.optimizer).state.values()
    return max((int(s["step"]) for s in state), default=0)


def _signal_proof_writer() -> None:
    """dist_checkpointing's torch_dist writer sends its results through a queue served by a
    process it spawns at the first save and keeps (filesystem_async._results_queue). A signal to
    the whole job (scancel, preemption) killed that process, and the checkpoint the signal asks
    for then failed. Serve the queue from a process that ignores those signals instead. (The
    writers it forks per save inherit the rank's handlers and are safe.)"""
    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=ignore_stop_signals)
        filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager alive


@torch.no_grad()
def save(engine, directory: Path, trainer_state: dict) -> None:
    """Write the layout-free part into `directory` (an existing, not yet published checkpoint).
    Collective: every rank calls it. A plain twin of the model at this TP size carries each
    tensor into dist_checkpointing, which also works where ZeRO-3 leaves the module empty."""
    model, rank0 = engine.module, torch.distributed.get_rank() == 0
    _signal_proof_writer()
    twin, params = _twin(model), dict(model.named_parameters())
    _link_fragments(engine.optimizer)
    if rank0:
        write_model_config(model.ttt, directory)
        (directory / "optimizer").mkdir()
    for key, sub in ((None, WEIGHTS_DIR), *((k, f"optimizer/{k}") for k in MOMENTS)):
        for name, p in twin.named_parameters():
            p.copy_(_whole(engine, params[name], key).reshape(p.shape))
        write_weights(twin, directory / sub)
    if rank0:
        write_atomic(directory / TRAINER_STATE, json.dumps(trainer_state | {"adam_step": adam_step(engine)},
                                                           indent=1) + "\n")
    torch.distributed.barrier()


def load_weights(model: TTTLanguageModel, directory: Path) -> None:
    """The fp32 weights into the plain module, before DeepSpeed partitions it (ZeRO-3) or copies
    it into its fp32 master weights (ZeRO 1-2)."""
    read_weights(model, directory / WEIGHTS_DIR)


def _materialize_state(optimizer, step: int) -> None:
    """Adam creates its state at the first step; create it now (zeros, overwritten below) for the
    flat fp32 partitions DeepSpeed hands to it, then link each parameter's slice of it."""
    flat = (getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO 1, 2
            or getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO 3
            or getattr(optimizer, "fp32_groups_flat_partition", None)  # bf16 optimizer (pipelines)
            or getattr(optimizer, "fp32_groups_flat", None)  # bf16 without ZeRO
            or [p for g in optimizer.param_groups for p in g["params"]])  # fp32 without ZeRO
    base = base_optimizer(optimizer)
    for t in flat:
        base.state[t] = {"step": step, "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
    for group in base.param_groups:
        group["step"] = step
    _link_fragments(optimizer)


@torch.no_grad()
def _set(engine, param: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        (safe_set_full_fp32_param(param, value) if key is None else safe_set_full_optimizer_state(param, value, key))
    elif (flat := _flat_slice(engine.optimizer, param, key)) is not None:
        flat.copy_(value)
    elif key is not None:
        engine.optimizer.state[param][key].copy_(value)


@torch.no_grad()
def load_optimizer(engine, directory: Path) -> dict:
    """Adam's moments and step count, and the exact fp32 master weights (DeepSpeed made its
    masters from the module, which under bf16 holds rounded copies). Returns the trainer state."""
    state = read_trainer_state(directory)
    _materialize_state(engine.optimizer, state["adam_step"])
    twin, params = _twin(engine.module), dict(engine.module.named_parameters())
    for key, sub in ((None, WEIGHTS_DIR), *((k, f"optimizer/{k}") for k in MOMENTS)):
        read_weights(twin, directory / sub)
        for name, p in twin.named_parameters():
            _set(engine, params[name], p.detach(), key)
    return state


def check_present(directory: Path, why: str) -> None:
    if not present(directory):
        raise CheckpointError(f"{directory} has no layout-free weights and optimizer state (model/, optimizer/, "
                              f"{TRAINER_STATE}): it was written by an older version, so {why}. Resume it "
                              "at the layout that wrote it; its next checkpoint will have them")
