"""Gradient reductions over the tensor-parallel group that Megatron performs after the backward."""

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def allreduce_sequence_parallel_grads(model: torch.nn.Module, tp_group: dist.ProcessGroup) -> None:
    """Sum the gradients of replicated parameters used on sequence shards (norm gains under
    sequence parallelism, tagged `sequence_parallel`): each TP rank holds the part from its tokens."""
    if dist.get_world_size(tp_group) == 1:
        return
    grads = [p.grad for p in model.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=tp_group)
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)
