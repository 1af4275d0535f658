"""Sharded state dicts for megatron-core dist_checkpointing: what each TP rank holds of what.

Checkpoints store every tensor by its full (global) shape, so a checkpoint saved at one TP size
loads at another. Fused column-parallel weights are stored as their components (q, k, v, ... and
gate, up), each split over TP, because the fused layout itself depends on the TP size.
"""

from dataclasses import replace

import torch
from megatron.core.dist_checkpointing.mapping import ShardedStateDict, ShardedTensor, ShardedTensorFactory
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_tensors_for_checkpoint

from megatron_ttt.models.fused import FusedColumns


def fused_components(sharded: ShardedTensor, columns: FusedColumns, tp_size: int) -> ShardedTensorFactory:
    """Store a fused weight ([c1_r; c2_r; ...] on rank r) as `KEY.c1`, `KEY.c2`, ..., each a
    tensor split over TP along dim 0; loading concatenates the local pieces back."""
    template = sharded.without_data()
    sizes = columns.local_sizes(tp_size)

    @torch.no_grad()
    def build(key: str, data: torch.Tensor, replica_id, flattened_range):
        whole = replace(template, key=key, data=data, dtype=data.dtype, replica_id=replica_id,
                        flattened_range=flattened_range)
        pieces, start = [], 0
        for name, size in zip(columns.names, sizes):
            for piece in whole.narrow(0, start, size):
                piece.key = f"{key}.{name}"
                pieces.append(piece)
            start += size
        return pieces

    @torch.no_grad()
    def merge(pieces: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pieces)

    return ShardedTensorFactory(sharded.key, sharded.data, build, merge, sharded.replica_id)


def own_parameters(module: torch.nn.Module, prefix: str, split_dims: dict[str, int], sharded_offsets,
                   metadata: dict, tp_group) -> ShardedStateDict:
    """The module's own (not its children's) tensors: `split_dims` name the TP-split ones."""
    own: dict = {}
    module._save_to_state_dict(own, "", keep_vars=True)
    return make_sharded_tensors_for_checkpoint(own, prefix, split_dims, sharded_offsets, tp_group=tp_group,
                                               dp_cp_group=metadata["dp_cp_group"])


def with_fused_weight(layer: torch.nn.Module, prefix: str, columns: FusedColumns, tp_size: int, sharded_offsets,
                      metadata: dict) -> ShardedStateDict:
    """A ColumnParallelLinear's sharded state dict with its fused weight stored by component."""
    sharded = layer.sharded_state_dict(prefix, sharded_offsets, metadata)
    sharded[f"{prefix}weight"] = fused_components(sharded[f"{prefix}weight"], columns, tp_size)
    return sharded


def mixer_sharded_state_dict(mixer: torch.nn.Module, prefix: str, sharded_offsets, metadata,
                             replicated: str) -> ShardedStateDict:
    """A TTT or LaCT mixer's: its own per-head tensors split over TP along dim 0 (but the one
    named `replicated`), its fused in-projection stored by component, its out-projection."""
    metadata = ensure_metadata_has_dp_cp_group(metadata)
    head_split = {n: 0 for n, _ in mixer.named_parameters(recurse=False) if n != replicated}
    sharded = own_parameters(mixer, prefix, head_split, sharded_offsets, metadata, mixer.tp_group)
    sharded |= with_fused_weight(mixer.in_proj, f"{prefix}in_proj.", mixer.columns, mixer.tp_size, sharded_offsets,
                                 metadata)
    return sharded | mixer.out_proj.sharded_state_dict(f"{prefix}out_proj.", sharded_offsets, metadata)
