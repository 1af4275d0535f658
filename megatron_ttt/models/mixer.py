"""TTT-Linear and TTT-MLP as megatron-core mixers, split over tensor-parallel ranks by heads.

Data flow for a [T(/tp), B, D] input (T/tp under sequence parallelism):

    in_proj (column parallel; gathers the sequence)  ->  q|p, [k], v, [gate], lr logits  (local heads)
    [share_qk: q = conv_q(p), k = conv_k(p)]  ->  heads [B, H/tp, T, d]  ->  RoPE(t mod b) on q, k
    ttt_inner_loop(q, k, v, lr, ...)  ->  z  ->  LayerNorm over all D (moments all-reduced over TP)
    [* gelu_tanh(gate)]  ->  out_proj (row parallel; reduce-scatters the sequence)  ->  [T(/tp), B, D]

Everything between the two projections is per head, so it runs on local heads without
communication, except the post-norm's two all-reduced moments.

Under context parallelism (CP) the input holds this rank's T/CP tokens: the projected q|p, k, v
and lr logits go through one all-to-all to [T, B, H/(tp*cp)] (parallel/context.py), the convs,
RoPE and inner loop run on whole sequences of those heads (with their slices of the per-head
parameters), and z comes back by the opposite all-to-all before the post-norm.
"""

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import nn

from megatron_ttt.models.columns import in_proj_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import MixerCache
from megatron_ttt.models.layers import (
    ProjectionSubmodules,
    RopeTables,
    build_projections,
    causal_depthwise_conv,
    head_parallel_layer_norm,
    projected_parts,
    replicated_weight,
    rope_in_mini_batches,
    rotate_pairs,
    streaming_causal_conv,
)
from megatron_ttt.models.sharding import mixer_sharded_state_dict
from megatron_ttt.models.packing import Packing
from megatron_ttt.ops import DocumentStarts, TTTInputs, TTTState, ttt_decode_step, ttt_inner_loop
from megatron_ttt.ops.inner import gelu_tanh
from megatron_ttt.ops.opaque import ttt_sequence_op
from megatron_ttt.parallel.context import context_group, heads_to_sequence, local_slice, sequence_to_heads
from megatron_ttt.run_options import InnerLoopOptions

POST_NORM_EPS = 1e-6


class TTTMixer(MegatronModule):
    """A TTT layer (Linear or MLP inner model, by `ttt.layer_type`) over local heads."""

    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig,
                 pg_collection: ProcessGroupCollection, inner_loop: InnerLoopOptions = InnerLoopOptions(),
                 layer_number: int = 1):
        super().__init__(config)
        tp, cp = config.tensor_model_parallel_size, config.context_parallel_size
        self.ttt, self.inner_loop, self.layer_number, self.tp_size = ttt, inner_loop, layer_number, tp
        self.tp_group, self.cp_group = pg_collection.tp, context_group(config, pg_collection)
        self.local_heads = ttt.num_heads // tp
        """Heads of this TP rank (its projections' width); each CP rank runs 1/cp of them."""
        self.heads = self.local_heads // cp
        """Heads this rank runs the inner loop of."""
        self.local_width = self.local_heads * ttt.head_dim
        self.columns = in_proj_columns(ttt)
        self._rope = RopeTables(ttt.head_dim, ttt.rope_theta)
        self.inner_lr_scale = 1.0
        """Multiplies ttt_base_lr (TTTLanguageModel.set_inner_lr_scale: TTT-MLP's inner-lr warm-up)."""
        self.in_proj, self.out_proj = build_projections(submodules, config, self.tp_group, ttt.hidden_size,
                                                        self.columns.width(), ttt.hidden_size,
                                                        ("ttt_in_proj", "ttt_out_proj"))
        self._allocate_head_params(config.params_dtype)

    def _allocate_head_params(self, dtype: torch.dtype) -> None:
        """The per-head parameters (and the shared token offsets), allocated only: models/build.py
        fills and tags every one as the parameter table says (or a checkpoint is read into them)."""
        ttt, H, d, D = self.ttt, self.local_heads, self.ttt.head_dim, self.local_width

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=dtype))

        widths = ttt.inner_widths
        self.inner_names: tuple[str, ...] = ()
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:]), 1):
            setattr(self, f"W{i}", param(H, w_in, w_out))
            setattr(self, f"b{i}", param(H, w_out))
            self.inner_names += (f"W{i}", f"b{i}")
        self.ttt_norm_weight, self.ttt_norm_bias = param(H, d), param(H, d)
        self.ttt_lr_bias = param(H)
        # Shared by all heads, so replicated; its gradient is summed over TP in forward().
        self.token_offset = param(ttt.mini_batch_size)
        self.post_norm_weight, self.post_norm_bias = param(D), param(D)
        if ttt.share_qk:
            self.conv_q_weight, self.conv_q_bias = param(D, 1, ttt.conv_kernel), param(D)
            self.conv_k_weight, self.conv_k_bias = param(D, 1, ttt.conv_kernel), param(D)

    def _mine(self, param: torch.Tensor) -> torch.Tensor:
        """A per-head parameter's rows (heads, or heads x width, along dim 0) of the heads this rank
        runs after the all-to-all (all of them at CP 1)."""
        return local_slice(param, 0, self.cp_group)

    @property
    def inner_weights(self) -> tuple[torch.Tensor, ...]:
        """The learnable initial inner weights (W1, b1[, W2, b2]) of the heads this rank runs."""
        return tuple(self._mine(getattr(self, n)) for n in self.inner_names)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, H*d] -> [B, H, T, d]."""
        T, B = x.shape[:2]
        return x.reshape(T, B, self.heads, self.ttt.head_dim).permute(1, 2, 0, 3)

    def _sequence_to_heads(self, parts: dict) -> dict:
        """This rank's tokens of the local heads' q|p, k, v and lr logits -> whole sequences of
        this rank's heads, in one all-to-all. The gate stays (it is used after the way back), as
        a copy: a view would keep the whole projection alive beside what moved."""
        names = [n for n in self.columns.names if n != "gate"]
        T, B, d = parts["v"].shape[0], parts["v"].shape[1], self.ttt.head_dim
        per_head = [parts[n].reshape(T, B, self.local_heads, 1 if n == "lr" else d) for n in names]
        moved = sequence_to_heads(torch.cat(per_head, dim=-1), self.cp_group)
        widths = [t.shape[-1] for t in per_head]
        kept = {"gate": parts["gate"].clone()} if "gate" in parts else {}
        return kept | {n: t.flatten(2) for n, t in zip(names, moved.split(widths, dim=-1))}

    def _queries_keys(self, parts: dict, cache: MixerCache | None,
                      packing: Packing | None) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [T, B, H*d]; the Mamba backbone's convolutions continue the cached sequence and
        see zeros before a document's first token."""
        if not self.ttt.share_qk:
            return parts["q"], parts["k"]
        p, since_start = parts["q"], None if packing is None else packing.since_start
        if cache is None:
            return (causal_depthwise_conv(p, self._mine(self.conv_q_weight), self._mine(self.conv_q_bias), since_start),
                    causal_depthwise_conv(p, self._mine(self.conv_k_weight), self._mine(self.conv_k_bias), since_start))
        q, _ = streaming_causal_conv(p, self.conv_q_weight, self.conv_q_bias, cache.conv, since_start)
        k, cache.conv = streaming_causal_conv(p, self.conv_k_weight, self.conv_k_bias, cache.conv, since_start)
        return q, k

    def _rotated(self, q: torch.Tensor, k: torch.Tensor, state: TTTState | None,
                 packing: Packing | None) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [B, H, T, d] with RoPE at positions t mod b: t counted from the sequence's start
        (the state's position inside its mini-batch), or from the document's."""
        table = self._rope(self.ttt.mini_batch_size, q.dtype, q.device)
        if packing is None:
            start = state.position if state is not None else 0
            return tuple(rope_in_mini_batches(self._heads(t), table, start) for t in (q, k))
        position = torch.remainder(packing.since_start, self.ttt.mini_batch_size)
        cos, sin = (angles[position][:, None] for angles in table)
        return tuple(rotate_pairs(self._heads(t), cos, sin) for t in (q, k))

    def forward(self, hidden_states: torch.Tensor, cache: MixerCache | None = None,
                packing: Packing | None = None) -> torch.Tensor:
        """[T(/tp), B, D] pre-normed hidden states -> [T(/tp), B, D]. With a cache (inference) the
        tokens continue the cached sequence, and the cache moves past them: one token is one
        constant-cost decode step. With a packing (the whole sequence's) every document starts
        from the initial state."""
        ttt = self.ttt
        parts = projected_parts(self, hidden_states, cache)
        q, k = self._queries_keys(parts, cache, packing)
        state = cache.ttt if cache is not None and cache.ttt is not None else None
        q, k = self._rotated(q, k, state, packing)
        lr_logits = parts["lr"] + self._mine(self.ttt_lr_bias)
        lr = (ttt.ttt_base_lr * self.inner_lr_scale / ttt.head_dim) * torch.sigmoid(lr_logits).permute(1, 2, 0)
        token_offset = replicated_weight(self.token_offset, self.tp_size > 1, self.tp_group)
        if state is None:
            state = TTTState.initial(self.inner_weights, q.shape[0])
        inner = TTTInputs(q, k, self._heads(parts["v"]), lr, token_offset, self._mine(self.ttt_norm_weight),
                          self._mine(self.ttt_norm_bias))
        documents = None if packing is None else DocumentStarts(packing.starts, self.inner_weights)
        if cache is None and torch.compiler.is_compiling():
            z = ttt_sequence_op(inner, self.inner_weights, mini_batch_size=ttt.mini_batch_size,
                                backend=self.inner_loop.backend,
                                time_checkpoint_group=self.inner_loop.time_checkpoint_group,
                                starts=None if packing is None else packing.starts)
        elif cache is not None and q.shape[2] == 1:
            z, state = ttt_decode_step(inner, state, mini_batch_size=ttt.mini_batch_size, documents=documents)
        else:
            with torch.profiler.record_function("ttt_inner_loop"):  # a profiler's name for its share of the forward
                z, state = ttt_inner_loop(inner, state, mini_batch_size=ttt.mini_batch_size,
                                          backend=self.inner_loop.backend,
                                          time_checkpoint_group=self.inner_loop.time_checkpoint_group,
                                          documents=documents, final_state=cache is not None)
        if cache is not None:
            cache.ttt = state
        z = heads_to_sequence(z.permute(2, 0, 1, 3), self.cp_group).flatten(2)
        out = head_parallel_layer_norm(z, self.post_norm_weight, self.post_norm_bias, POST_NORM_EPS,
                                       ttt.hidden_size, self.tp_group if self.tp_size > 1 else None)
        if ttt.use_gate:
            out = gelu_tanh(parts["gate"]) * out
        y, _ = self.out_proj(out)
        return y

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """Per-head tensors split over TP along dim 0 (the token offsets replicated); the fused
        in-projection stored by component."""
        return mixer_sharded_state_dict(self, prefix, sharded_offsets, metadata, replicated="token_offset")


class TTTLinearMixer(TTTMixer):
    """TTT-Linear: the inner model is z W + b per head."""

    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig, **kw):
        if ttt.layer_type != "linear":
            raise ValueError(f"TTTLinearMixer built with layer_type {ttt.layer_type!r}")
        super().__init__(config, submodules, ttt, **kw)


class TTTMLPMixer(TTTMixer):
    """TTT-MLP: the inner model is a two-layer tanh-GELU MLP of width 4 * head_dim per head."""

    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig, **kw):
        if ttt.layer_type != "mlp":
            raise ValueError(f"TTTMLPMixer built with layer_type {ttt.layer_type!r}")
        super().__init__(config, submodules, ttt, **kw)
