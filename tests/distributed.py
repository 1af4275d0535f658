"""Run a function on N local processes joined in a gloo group (real multi-process, like torchrun),
or one `mttt` command in a process of its own.

The processes fork from a server that imported torch, megatron-core, DeepSpeed and the model once,
and never ran an op or joined a group (multiprocessing's forkserver): each starts clean in well
under a second, where a new interpreter spends seconds importing them again.
"""

import multiprocessing
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PRELOADED = ["torch", "megatron.core", "deepspeed", "megatron_ttt.cli", "megatron_ttt.training.trainer",
             "megatron_ttt.models.build", "megatron_ttt.parallel.setup", "tests.distributed"]
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


def run_command(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`python -m megatron_ttt.cli ARGS` with environment `env`, in a forked process: its exit
    status and output; a process still running after `timeout` seconds is killed (AssertionError)."""
    with tempfile.TemporaryDirectory() as directory:
        process = multiprocessing.get_context("forkserver").Process(target=_command_entry,
                                                                     args=(args, env, directory))
        process.start()
        process.join(timeout)
        stdout, stderr = ((Path(directory) / name).read_text() for name in ("stdout", "stderr"))
        if process.is_alive():
            process.kill()
            process.join()
            raise AssertionError(f"mttt {' '.join(args)} did not finish in {timeout} s and was killed:\n"
                                 f"{stdout[-3000:]}\n{stderr[-3000:]}")
        return subprocess.CompletedProcess(["mttt", *args], process.exitcode, stdout, stderr)


def _command_entry(args: list[str], env: dict, directory: str) -> None:
    """What a new interpreter would have: the environment (its thread count and warning filter
    too, which the server read at its own start), output to files, the command's exit status."""
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if env.get("PYTHONWARNINGS") == "ignore":
        warnings.simplefilter("ignore")
    with open(Path(directory) / "stdout", "w") as out, open(Path(directory) / "stderr", "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        from megatron_ttt.cli import main

        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status if isinstance(status, int) else 0 if status is None else 1)
