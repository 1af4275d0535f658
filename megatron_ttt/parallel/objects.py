"""Small Python objects shared between ranks (file lists, findings), outside any process group
too: a single process is its own rank 0."""

import torch.distributed as dist


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def from_rank0(value):
    """Rank 0's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def every_rank(value) -> list:
    """Each rank's `value`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def my_share(items: list) -> list:
    """This rank's items of `items` (every world-size-th, from its rank on)."""
    if not dist.is_initialized():
        return items
    return items[dist.get_rank()::dist.get_world_size()]
