"""How a model runs, apart from what it is.

Run options are handed to the model when it is built and never saved with it: a checkpoint
trained with the Triton kernels evaluates on a CPU, and a resume may change the time-axis group
(a memory knob that leaves every number bitwise equal). Plain Python, so the config checks them
when it is loaded without importing torch.
"""

import warnings
from dataclasses import dataclass

DUAL_FORM_BACKENDS = ("torch", "compile", "manual")
"""The backends that run the PyTorch dual form (ops.dual.ttt_dual's `backend`): its autograd
step, that step through torch.compile, TTT-Linear's backward written out."""
BACKENDS = ("auto", "triton", *DUAL_FORM_BACKENDS)
"""Every inner-loop backend (InnerLoopOptions.backend, ops.ttt_inner_loop's `backend`)."""

_warned: set[str] = set()
"""The messages warn_once has shown in this process. Python's own once-per-location filter does
not suffice: every warnings.catch_warnings() or filter change (libraries make them during a step)
resets it, and a fallback would then be reported again at every step of every layer."""


def check_backend(backend: str, allowed: tuple[str, ...] = BACKENDS) -> None:
    if backend not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {backend!r}")


def warn_once(message: str) -> None:
    """Warn that a backend cannot serve what was asked and what runs instead, once per message
    per process (not per call or layer)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=2)


def triton_widths_unsupported(widths: tuple[int, ...]) -> str | None:
    """Why the fused Triton kernels cannot take an inner model of these layer widths (tl.dot's
    tiles), or None if they can."""
    if not all(w >= 16 and w & (w - 1) == 0 for w in widths):
        return f"the inner widths {list(widths)} are not all powers of two >= 16"
    return None


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
    written out (a third of the ops, about half the saved bytes; TTT-MLP as torch, warned once)."""
    time_checkpoint_group: int = 0
    """Time-axis checkpointing: keep the inner state every G mini-batches and recompute inside
    them in the backward (0: off). Saves memory; the numbers are bitwise unchanged."""

    def __post_init__(self):
        check_backend(self.backend)
        check_time_checkpoint_group(self.time_checkpoint_group)
