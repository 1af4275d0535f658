"""Context parallelism: each rank of a context-parallel (CP) group holds a contiguous T/CP slice
of every sample outside the mixers; inside them an all-to-all trades that sequence split for a
head split, so every rank runs its heads over whole sequences (the TTT inner loop, the Mamba
backbone's q/k convolutions and attention need no change). As megatron-core's Mamba CP
(`ssm/mamba_context_parallel.py`), with contiguous slices: nothing here needs attention's
load-balancing zigzag, since no rank ever runs a causal mixer over a part of a sequence.

Every exchange is differentiable (the backward of an all-to-all is the opposite all-to-all); the
all-to-alls and slices are the identity without a group (CP = 1).
"""

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import all_to_all


def context_group(config, groups: ProcessGroupCollection) -> dist.ProcessGroup | None:
    """The context-parallel group of `groups` where a model's config (a TransformerConfig) has
    context_parallel_size > 1; None (no communication) at 1."""
    return groups.cp if config.context_parallel_size > 1 else None


def group_size(group: dist.ProcessGroup | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """[T/CP, B, H, w] (this rank's tokens, all heads) -> [T, B, H/CP, w] (all tokens, this
    rank's heads: rank c gets heads c*H/CP ..)."""
    cp = group_size(group)
    if cp == 1:
        return x
    t, b, h, w = x.shape
    # Heads-block major, so chunk j of dim 0 goes to rank j; what arrives is time-chunk major.
    send = x.reshape(t, b, cp, h // cp, w).permute(2, 0, 1, 3, 4).contiguous()
    received = all_to_all(group, send.reshape(cp * t, b, h // cp, w))
    return received.reshape(cp * t, b, h // cp, w)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """[T, B, H/CP, w] -> [T/CP, B, H, w]: sequence_to_heads undone."""
    cp = group_size(group)
    if cp == 1:
        return x
    t, b, h, w = x.shape
    received = all_to_all(group, x.contiguous()).reshape(cp, t // cp, b, h, w)
    return received.permute(1, 2, 0, 3, 4).reshape(t // cp, b, cp * h, w)


def with_previous_rows(x: torch.Tensor, rows: int, group: dist.ProcessGroup) -> torch.Tensor:
    """x [T/CP, ...] with the previous rank's last `rows` rows of the CP `group` in front
    ([rows + T/CP, ...]; zeros on the first rank, as a causal convolution's padding): what a
    convolution looking back `rows` tokens needs across the ranks' boundaries."""
    if x.shape[0] < rows:
        raise ValueError(f"{x.shape[0]} tokens per context-parallel rank are fewer than the {rows} a convolution "
                         "looks back; use a longer sequence or a smaller context_parallel")
    return torch.cat((_PreviousRows.apply(x, rows, group), x))


class _PreviousRows(torch.autograd.Function):
    """The previous rank's last `rows` rows (zeros on the first rank); the backward hands each
    received row's gradient back to the rank that sent it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group, ctx.rows, ctx.length = group, rows, x.shape[0]
        tails = _all_gather(x[x.shape[0] - rows:].contiguous(), group)
        rank = dist.get_rank(group)
        return torch.zeros_like(tails[0]) if rank == 0 else tails[rank - 1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = _all_gather(grad.contiguous(), ctx.group)
        rank, size = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        tail = torch.zeros_like(grads[0]) if rank == size - 1 else grads[rank + 1]
        return torch.cat((tail.new_zeros(ctx.length - ctx.rows, *tail.shape[1:]), tail)), None, None


def _all_gather(t: torch.Tensor, group: dist.ProcessGroup) -> list[torch.Tensor]:
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return out


def local_slice(t: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """This rank's contiguous 1/CP of `t` along `dim`."""
    cp = group_size(group)
    if t.shape[dim] % cp:
        raise ValueError(f"{t.shape[dim]} positions do not split over context_parallel {cp}")
    return t if cp == 1 else t.chunk(cp, dim=dim)[dist.get_rank(group)]


def all_slices(t: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `t` (its slice along `dim`) joined in rank order, on every rank; no gradient."""
    if group_size(group) == 1:
        return t
    return torch.cat(_all_gather(t.contiguous(), group), dim=dim)
