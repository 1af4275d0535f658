"""Run a function on N local processes joined in a gloo group (real multi-process, like torchrun).

The processes fork from a server that imported torch, megatron-core and the model once, and never
ran an op or joined a group (multiprocessing's forkserver): each starts clean in well under a
second, where a spawned one spends seconds importing them again.
"""

import multiprocessing
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PRELOADED = ["torch", "megatron.core", "megatron_ttt.models.build", "megatron_ttt.parallel.setup", "tests.distributed"]
multiprocessing.set_forkserver_preload(PRELOADED)


def _entry(rank: int, world_size: int, directory: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(directory) / "store"), world_size)
    result = fn(rank, world_size, store, *args)
    torch.save(result, Path(directory) / f"result-{rank}.pt")


def run_distributed(world_size: int, fn, *args) -> list:
    """fn(rank, world_size, store, *args) on each rank (a module-level function); its results."""
    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(_entry, args=(world_size, directory, fn, args), nprocs=world_size, join=True,
                           start_method="forkserver")
        return [torch.load(Path(directory) / f"result-{r}.pt", weights_only=False) for r in range(world_size)]
