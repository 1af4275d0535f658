"""Host-side helpers shared by the TTT kernels' launchers: tile sizes, precision, input checks."""

import torch
import triton

from megatron_ttt.run_options import check_time_checkpoint_group, triton_widths_unsupported


def row_tile(mini_batch: int) -> int:
    """Rows of a mini-batch tile: the mini-batch rounded up to a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(mini_batch))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (the twin's numbers); half inputs may use tf32 on the state."""
    return "ieee" if dtype == torch.float32 else "tf32"


def time_checkpoint_group_size(time_checkpoint_group: int, n_blocks: int) -> int:
    """G of the kernels: 0 (no checkpointing) keeps every mini-batch's starting state, as G = 1 does."""
    check_time_checkpoint_group(time_checkpoint_group)
    return max(1, min(time_checkpoint_group, n_blocks))


def unsupported(q: torch.Tensor, widths: tuple[int, ...]) -> str | None:
    """Why the kernels cannot take inputs like q with these inner widths, or None if they can."""
    if reason := triton_widths_unsupported(widths):
        return reason
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the inputs are {q.dtype}; the kernels take fp32, fp16 or bf16"
    return None


def check_kernel_inputs(q: torch.Tensor, widths: tuple[int, ...], mini_batch_size: int) -> None:
    """Raise ValueError for what the kernels do not take; shapes are checked by the caller."""
    reason = unsupported(q, widths)
    if reason:
        raise ValueError(f"the Triton TTT kernels cannot run: {reason}")
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")


def rows(x: torch.Tensor) -> torch.Tensor:
    """[B,H,...] -> contiguous [B*H,...] fp32: one row per program."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).float().contiguous()


def per_head(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-program partial sums [B*H,...] of a per-head parameter's gradient -> [H,...]."""
    return x.reshape(batch, -1, *x.shape[1:]).sum(0)


def check_restarts(resets: torch.Tensor | None, initial: tuple[torch.Tensor, ...] | None, q: torch.Tensor,
                   state: tuple[torch.Tensor, ...], mini_batch_size: int) -> None:
    """Raise ValueError naming what is missing or mis-shaped in a call's restarts.

    Args:
        resets: None, or bool [B, ceil(T / mini_batch_size)]: the state restarts at the start of
            these mini-batches.
        initial: None (without resets), or what the state restarts from: one [H,...] tensor per
            state tensor.
        q: [B,H,T,d] the queries.
        state: the [B,H,...] state tensors before the first token.
        mini_batch_size: b.
    """
    if resets is None:
        if initial is not None:
            raise ValueError("initial is given without resets; the state restarts only where resets says")
        return
    B, _, T, _ = q.shape
    blocks = (B, triton.cdiv(T, mini_batch_size))
    if resets.dtype != torch.bool or tuple(resets.shape) != blocks:
        raise ValueError(f"resets must be a bool [B, n_blocks] = {list(blocks)} tensor, got {resets.dtype} "
                         f"{list(resets.shape)}")
    if initial is None:
        raise ValueError("resets needs initial, the per-head weights the state restarts from")
    want, got = [tuple(s.shape[1:]) for s in state], [tuple(w.shape) for w in initial]
    if got != want:
        raise ValueError(f"initial must be the per-head weights {want}, got {got}")
    if any(x.device != q.device for x in (resets, *initial)):
        raise ValueError(f"resets and initial must be on the inputs' device {q.device}")
