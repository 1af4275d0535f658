"""Run megatron-core on machines without CUDA (CPU + gloo), for tests and small runs.

megatron-core calls three CUDA facilities even for CPU tensors:
- `torch.cuda.current_device()` to place buffers (sequence-parallel gathers, initialization);
- `torch.cuda.synchronize()` (dist_checkpointing saves);
- the CUDA RNG and its tracker (`model_parallel_cuda_manual_seed`, `get_cuda_rng_tracker().fork()`).

`apply_cpu_shims()` routes these to the CPU: the current device is "cpu", synchronize does
nothing, and the tracker's RNG states are CPU generator states, so forking the
"model-parallel" RNG works as on a GPU. It changes nothing when CUDA is available, and model code
never calls it: entry points (the CLI, launchers, test harnesses) do, once, before building a
model.
"""

import torch
from megatron.core.tensor_parallel import random as mcore_random

_APPLIED: list[str] = []


def _cpu_device() -> str:
    return "cpu"


def _synchronize(device=None) -> None:
    """CPU work is synchronous."""


def _get_rng_state(device="cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device=-1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


def apply_cpu_shims() -> list[str]:
    """Install the shims if CUDA is absent (idempotent); return the names that are shimmed."""
    if torch.cuda.is_available() or _APPLIED:
        return list(_APPLIED)
    replacements = [
        (torch.cuda, "current_device", _cpu_device),
        (torch.cuda, "synchronize", _synchronize),
        (torch.cuda, "get_rng_state", _get_rng_state),
        (torch.cuda, "manual_seed", _manual_seed),
        (mcore_random, "_get_cuda_rng_state", _get_rng_state),
        (mcore_random, "_set_cuda_rng_state", _set_rng_state),
    ]
    for owner, name, fn in replacements:
        setattr(owner, name, fn)
        _APPLIED.append(f"{owner.__name__}.{name}")
    return list(_APPLIED)
