"""Keeping gloo's worker threads from starting OpenMP thread teams.

ProcessGroupGloo runs each collective on a worker thread of its own, with torch's current
intra-op thread count. A collective that copies a large buffer there (`all_gather_object`, the
metadata exchange inside dist_checkpointing's load and save) makes libgomp start a second team
of threads on that worker, which lives as long as the process group. With more OpenMP threads
than CPUs, libgomp stops spinning between parallel regions in every team, so each parallel op
of the main thread then waits on a futex wake-up: after one checkpoint load, a 125m TTT-MLP
forward at T = 2048 took 7.1 s instead of 3.4 s on 2 cores (benchmarks/load_then_forward.py).
With one intra-op thread during the collective, the worker never starts a team.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded_collectives() -> Iterator[None]:
    """torch's intra-op threads at 1 for the body (collectives with large buffers, checkpoint
    I/O), restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
