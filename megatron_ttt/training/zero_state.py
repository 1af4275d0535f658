"""The fp32 weights and Adam moments inside DeepSpeed's optimizers, as whole tensors per parameter:
what the layout-free part of a checkpoint (checkpoint/layout_free.py) is written from and loaded
into. Everything here leans on DeepSpeed's internals (flat groups, fragment links, the ZeRO
optimizers' attribute names); nothing outside training/ needs to.
"""

from pathlib import Path

import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)

from megatron_ttt.checkpoint import layout_free
from megatron_ttt.training.muon import Muon


def base_optimizer(optimizer):
    """The torch optimizer that holds Adam's state (DeepSpeed's ZeRO and bf16 wrappers keep it as
    `.optimizer`; without ZeRO in fp32 the engine's optimizer is Adam itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def adam_step(engine) -> int:
    """Adam's step count (its bias correction), the same for every parameter group (Muon's
    groups, stepped without state, have none)."""
    state = base_optimizer(engine.optimizer).state.values()
    return max((int(s["step"]) for s in state if "step" in s), default=0)


def _flat_slice(optimizer, param: torch.nn.Parameter, key: str | None) -> torch.Tensor | None:
    """bf16 without ZeRO: the parameter's fp32 master (key None) or that master's Adam moment;
    None for other optimizers. DeepSpeed's FP16_Optimizer in bf16 mode (under AdamW) keeps each
    group's masters in one flat tensor, back to back, in order, unpadded; its unfused twin (under
    a client optimizer: Muon's) keeps one master per parameter."""
    base = base_optimizer(optimizer)
    for group, flat in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups_flat", ())):
        offset = 0
        for p in group:
            if p is param:
                whole = flat if key is None else base.state[flat][key]
                return whole[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    for group, masters in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups", ())):
        for p, master in zip(group, masters):
            if p is param:
                return master if key is None else base.state[master][key]
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


def _link_fragments(optimizer) -> None:
    """Point each parameter at its slice of Adam's state (ZeRO 1-2 and the bf16 optimizer).
    DeepSpeed links them once, after the first parameter group's first step, when the other
    groups have no state yet; linking again once all have state makes every slice readable."""
    if hasattr(optimizer, "_hp_optimizer_states_linked"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def _local_shape(param: torch.nn.Parameter) -> torch.Size:
    """This TP rank's whole shape of a parameter (ZeRO-3 leaves the module an empty placeholder)."""
    return getattr(param, "ds_shape", param.shape)


def save(engine, directory: Path, trainer_state: dict, muon: Muon | None = None) -> None:
    """The layout-free part of the engine's state into `directory` (collective). With Muon the
    hidden matrices have its momentum instead of Adam's moments; the missing ones are zeros."""
    _link_fragments(engine.optimizer)
    params = dict(engine.module.named_parameters())
    matrices = set() if muon is None else set(muon.matrices)

    def whole(key: str | None, name: str) -> torch.Tensor:
        if key == layout_free.MUON_PART[0]:
            return muon.buffers.get(name, torch.zeros(_local_shape(params[name])))
        if key is not None and name in matrices:
            return torch.zeros(_local_shape(params[name]))
        return _whole(engine, params[name], key)

    layout_free.write(directory, engine.module, whole, trainer_state | {"adam_step": adam_step(engine)},
                      muon is not None)


def _materialize_state(optimizer, step: int) -> None:
    """Adam creates its state at the first step; create it now (zeros, overwritten below) for the
    flat fp32 partitions DeepSpeed hands to it, then link each parameter's slice of it."""
    flat = (getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO 1, 2
            or getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO 3
            or getattr(optimizer, "fp32_groups_flat_partition", None)  # bf16 optimizer (pipelines)
            or getattr(optimizer, "fp32_groups_flat", None)  # bf16 without ZeRO
            or [t for g in getattr(optimizer, "fp32_groups", ()) for t in g]  # bf16 without ZeRO, unfused
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


def _read_into(engine, directory: Path, parts: tuple, muon: Muon | None = None) -> None:
    params = dict(engine.module.named_parameters())
    matrices = set() if muon is None else set(muon.matrices)

    def receive(key: str | None, name: str, value: torch.Tensor) -> None:
        if key == layout_free.MUON_PART[0]:
            if name in matrices:
                muon.buffers[name] = value.clone()
        else:
            _set(engine, params[name], value, key)

    layout_free.read(directory, engine.module, receive, parts)


def load(engine, directory: Path, muon: Muon | None = None) -> dict:
    """Adam's moments and step count, Muon's momentum, and the exact fp32 master weights
    (DeepSpeed made its masters from the module, which under bf16 holds rounded copies). Returns
    the trainer state."""
    state = layout_free.read_trainer_state(directory)
    _materialize_state(engine.optimizer, state["adam_step"])
    _read_into(engine, directory, layout_free.PARTS, muon)
    return state


def load_weights(engine, directory: Path) -> None:
    """The exact fp32 master weights of a model directory or checkpoint, Adam's state left as it
    is (DeepSpeed made its masters from the module, which under bf16 holds rounded copies)."""
    _read_into(engine, directory, layout_free.WEIGHTS)
