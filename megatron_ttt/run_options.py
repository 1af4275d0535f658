"""How a model runs, apart from what it is.

Run options are handed to the model when it is built and never saved with it: a checkpoint
trained with the Triton kernels evaluates on a CPU, and a resume may change the time-axis group
(a memory knob that leaves every number bitwise equal). Plain Python, so the config checks them
when it is loaded without importing torch.
"""

from dataclasses import dataclass

BACKENDS = ("auto", "triton", "torch", "compile", "manual")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_time_checkpoint_group(group: int) -> None:
    if not isinstance(group, int) or group < 0:
        raise ValueError(f"time_checkpoint_group must be an integer >= 0 (0 = off), got {group!r}")


@dataclass(frozen=True)
class InnerLoopOptions:
    """How every TTT layer runs its inner loop."""

    backend: str = "auto"
    """auto: the fused Triton kernels on CUDA tensors they support, the PyTorch dual form
    elsewhere; triton or torch forces one; compile: the PyTorch dual form with each mini-batch's
    step through torch.compile (a one-time compile of seconds to a minute per kind of
    mini-batch, then fewer, fused ops); manual: the PyTorch dual form with TTT-Linear's backward
    written out (a third of the ops, about half the saved bytes; TTT-MLP as torch)."""
    time_checkpoint_group: int = 0
    """Time-axis checkpointing: keep the inner state every G mini-batches and recompute inside
    them in the backward (0: off). Saves memory; the numbers are bitwise unchanged."""

    def __post_init__(self):
        check_backend(self.backend)
        check_time_checkpoint_group(self.time_checkpoint_group)
