"""Starting torch.distributed and megatron-core's model-parallel groups."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_ttt.parallel.cpu_shims import apply_cpu_shims


@dataclass(frozen=True)
class ModelParallel:
    """How each model replica is split over ranks (the data-parallel size is what remains)."""

    tensor_parallel: int = 1
    """Ranks that split each layer's heads (and the vocabulary); data parallel takes the rest."""
    sequence_parallel: bool = False
    """Split the sequence over the TP ranks outside the mixers and MLPs (needs tensor_parallel > 1)."""
    context_parallel: int = 1
    """Ranks that split each sample's sequence (and, inside the mixers, the heads): parallel/context.py."""


def init_parallel(model_parallel: ModelParallel, seed: int = 0, store: dist.Store | None = None) -> None:
    """Join the process group (torchrun's environment; a single process without one) and build
    the tensor/context/data-parallel groups (TP innermost, then CP, then DP). On a machine without
    CUDA: gloo and the CPU shims."""
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
    world = dist.get_world_size()
    tp, cp = model_parallel.tensor_parallel, model_parallel.context_parallel
    if world % (tp * cp):
        raise ValueError(f"world size {world} is not divisible by tensor_parallel x context_parallel = {tp} x {cp}")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
    model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def parallel_groups(model_parallel: ModelParallel, seed: int = 0, store: dist.Store | None = None) -> Iterator[None]:
    """The process group and megatron-core's groups for the body of a `with`, torn down after it
    (also when it fails)."""
    init_parallel(model_parallel, seed, store)
    try:
        yield
    finally:
        destroy_parallel()
