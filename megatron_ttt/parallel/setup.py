"""Starting torch.distributed and megatron-core's model-parallel groups."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_ttt.parallel.cpu_shims import apply_cpu_shims
from megatron_ttt.parallel.launcher import die_with_launcher
from megatron_ttt.parallel.layout import ParallelLayout, layout_problems


GROUPS = ("tp", "cp", "tp_cp", "dp", "dp_cp")
"""The process groups handed out (megatron-core's names): TP, CP, both, DP, DP x CP."""


def init_parallel(layout: ParallelLayout, seed: int = 0, store: dist.Store | None = None) -> ProcessGroupCollection:
    """Join the process group (torchrun's environment; a single process without one) and build
    the tensor/context/data-parallel groups (TP innermost, then CP, then DP); they are handed to
    whoever needs them, never looked up. On a machine without CUDA: gloo and the CPU shims. Under
    torchrun the process dies with torchrun (parallel/launcher.py)."""
    die_with_launcher()
    apply_cpu_shims()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if store is None and "MASTER_ADDR" not in os.environ:
            # A single process (no launcher, which would set MASTER_ADDR): an in-memory store.
            # DeepSpeed still reads the launcher's rank variables.
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        elif store is not None:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    layout = replace(layout, processes=dist.get_world_size())
    if problems := layout_problems(layout):
        raise ValueError("; ".join(problems))
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=layout.tensor_parallel,
                                             context_parallel_size=layout.context_parallel)
    model_parallel_cuda_manual_seed(seed)
    return ProcessGroupCollection.use_mpu_process_groups(required_pgs=list(GROUPS))


def destroy_parallel() -> None:
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def parallel_groups(layout: ParallelLayout, seed: int = 0,
                    store: dist.Store | None = None) -> Iterator[ProcessGroupCollection]:
    """The process groups for the body of a `with` (`as groups`), torn down after it (also when it
    fails)."""
    groups = init_parallel(layout, seed, store)
    try:
        yield groups
    finally:
        destroy_parallel()
