"""Causal self-attention as a megatron-core mixer, beside the TTT layers of a hybrid model.

Data flow for a [T(/tp), B, D] input, as the TTT mixer's:

    in_proj (column parallel; gathers the sequence)  ->  q [H/tp heads], k, v [Hkv/tp heads]
    RoPE at absolute positions on q, k  ->  ops.causal_attention (full, or a sliding window)
    out_proj (row parallel; reduce-scatters the sequence)  ->  [T(/tp), B, D]

Heads are split over TP ranks, query and key/value heads alike, so every rank's query heads read
only its own key/value heads (grouped-query attention needs num_kv_heads divisible by TP).
Under context parallelism one all-to-all (parallel/context.py) moves each key/value head with its
group of query heads from a T/CP split to whole sequences of 1/CP of the heads, and the output
goes back by the opposite one. Where a TP rank's key/value heads do not split over CP, each is
repeated (as grouped-query attention reads it anyway) until they do: the num_heads / num_kv_heads
query heads of a group always suffice.
A model that resets at documents masks every query to its own document (RoPE's angles depend on
distances only, so absolute positions stay right). At inference the cache holds the keys
(rotated) and values seen so far: all of them for full
attention, the last attention_window - 1 for a sliding window, so a window layer decodes in
constant memory and time per token.
"""

import math

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule

from megatron_ttt.models.columns import qkv_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import MixerCache
from megatron_ttt.models.layers import ProjectionSubmodules, RopeTables, build_projections, rotate_pairs
from megatron_ttt.models.packing import Packing
from megatron_ttt.models.sharding import ensure_metadata_has_dp_cp_group, with_fused_weight
from megatron_ttt.ops.attention import causal_attention
from megatron_ttt.parallel.context import context_group, group_size, heads_to_sequence, sequence_to_heads


def cached_keys(k: torch.Tensor, v: torch.Tensor, segments: torch.Tensor | None, cache: MixerCache,
                window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The keys and values to attend to (the cache's, then these) with their documents, and the
    cache moved past them: everything for full attention, the last window - 1 for a window."""
    if cache.keys is not None:
        k, v = torch.cat((cache.keys, k), dim=2), torch.cat((cache.values, v), dim=2)
        segments = None if segments is None else torch.cat((cache.segments, segments), dim=1)
    keep = k.shape[2] if window is None else min(k.shape[2], window - 1)
    cache.keys, cache.values = k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:]
    cache.segments = None if segments is None else segments[:, segments.shape[1] - keep:]
    return k, v, segments


class AttentionMixer(MegatronModule):
    """Full causal attention (window None) or sliding-window attention over local heads."""

    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig,
                 pg_collection: ProcessGroupCollection, window: int | None = None, layer_number: int = 1):
        super().__init__(config)
        tp = config.tensor_model_parallel_size
        self.ttt, self.window, self.layer_number, self.tp_size = ttt, window, layer_number, tp
        self.tp_group, self.cp_group = pg_collection.tp, context_group(config, pg_collection)
        self.local_heads, self.local_kv_heads = ttt.num_heads // tp, ttt.kv_heads // tp
        self.columns = qkv_columns(ttt)
        self._rope = RopeTables(ttt.head_dim, ttt.rope_theta)
        self.in_proj, self.out_proj = build_projections(submodules, config, self.tp_group, ttt.hidden_size,
                                                        self.columns.width(), ttt.hidden_size,
                                                        ("attention_qkv", "attention_out"))

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """[T, B, heads*d] -> [B, heads, T, d]."""
        T, B = x.shape[:2]
        return x.reshape(T, B, heads, self.ttt.head_dim).permute(1, 2, 0, 3)

    def _sequence_to_heads(self, parts: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's tokens of the local heads' q, k, v -> whole sequences of this rank's
        1/CP of them [B, heads, T, d], each key/value head travelling with its query heads."""
        cp, d = group_size(self.cp_group), self.ttt.head_dim
        T, B = parts["q"].shape[:2]
        kv_heads = self.local_kv_heads
        repeat = cp // math.gcd(kv_heads, cp)
        groups = [parts["q"].reshape(T, B, kv_heads * repeat, -1)]
        groups += [parts[n].reshape(T, B, kv_heads, 1, d).expand(-1, -1, -1, repeat, -1).reshape(T, B, -1, d)
                   for n in ("k", "v")]
        moved = sequence_to_heads(torch.cat(groups, dim=-1), self.cp_group)
        q, k, v = moved.split([groups[0].shape[-1], d, d], dim=-1)
        return q.reshape(cp * T, B, -1, d).permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)

    def forward(self, hidden_states: torch.Tensor, cache: MixerCache | None = None,
                packing: Packing | None = None) -> torch.Tensor:
        """[T(/tp), B, D] pre-normed hidden states -> [T(/tp), B, D]; with a cache the tokens
        continue the cached sequence and the cache moves past them; with a packing (the whole
        sequence's) a query attends within its document only."""
        projected, _ = self.in_proj(hidden_states)
        parts = self.columns.split(projected, self.tp_size)
        if self.cp_group is not None:
            if cache is not None:
                raise ValueError("inference with a cache runs at context_parallel 1")
            q, k, v = self._sequence_to_heads(parts)
        else:
            q, k, v = (self._heads(parts[n], h) for n, h in
                       (("q", self.local_heads), ("k", self.local_kv_heads), ("v", self.local_kv_heads)))
        start = cache.tokens if cache is not None else 0
        cos, sin = self._rope(start + q.shape[2], q.dtype, q.device)
        q, k = rotate_pairs(q, cos[start:], sin[start:]), rotate_pairs(k, cos[start:], sin[start:])
        segments = None if packing is None else packing.segments
        if cache is not None:
            k, v, segments = cached_keys(k, v, segments, cache, self.window)
            cache.tokens += q.shape[2]
        out = causal_attention(q, k, v, self.window, start, segments=segments)
        y, _ = self.out_proj(heads_to_sequence(out.permute(2, 0, 1, 3), self.cp_group).flatten(2))
        return y

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """The fused q|k|v projection stored by component, each split over TP by heads."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        sharded = with_fused_weight(self.in_proj, f"{prefix}in_proj.", self.columns, self.tp_size, sharded_offsets,
                                    metadata)
        return sharded | self.out_proj.sharded_state_dict(f"{prefix}out_proj.", sharded_offsets, metadata)
