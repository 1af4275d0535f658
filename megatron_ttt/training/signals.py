"""Stopping on request: SIGTERM or SIGUSR1 (what SLURM sends before preemption or the time
limit) or SIGINT (Ctrl-C) makes every rank finish its step, save a checkpoint and exit with
EXIT_PREEMPTED. A second Ctrl-C stops at once, without a checkpoint."""

import signal

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75
"""The run saved a checkpoint on a signal and stopped early: requeue it with `--resume auto`."""
EXIT_NONFINITE = 3
"""The loss became NaN or infinite; no checkpoint was written for that step."""
EXIT_INTERRUPTED = 130
"""Stopped at once by a second Ctrl-C (the shell's status for SIGINT): no checkpoint of this step."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""What SLURM (scancel, preemption, the time limit), a terminal or torchrun passing either on sends."""


class StopRequests:
    """Records the first stop signal; `agreed()` tells every rank. Installed before the data
    loader starts its workers, which inherit it, so a Ctrl-C to the terminal's whole process
    group does not end them before the checkpoint."""

    def __init__(self, signals=STOP_SIGNALS):
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # Ctrl-C with a stop pending: the user will not wait for the checkpoint
        self.received = self.received or signum

    def agreed(self) -> bool:
        """True on every rank as soon as any rank received a signal (one small all-reduce)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "another rank's signal"
