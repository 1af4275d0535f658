"""Stopping on request: SIGTERM or SIGUSR1 (what SLURM sends before preemption or the time
limit) makes every rank finish its step, save a checkpoint and exit with EXIT_PREEMPTED."""

import signal

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75
"""The run saved a checkpoint on a signal and stopped early: requeue it with `--resume auto`."""
EXIT_NONFINITE = 3
"""The loss became NaN or infinite; no checkpoint was written for that step."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""What SLURM (scancel, preemption, the time limit) or a terminal sends to every process of a job."""


class StopRequests:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank as soon as any rank received a signal (one small all-reduce)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
