"""LaCT's layer (Zhang et al. 2025, lact_llm/lact_model/layer_lact_swiglu.py) as a megatron-core
mixer, split over tensor-parallel ranks by fast-weight heads.

Data flow for a [T(/tp), B, D] input (T/tp under sequence parallelism):

    in_proj (column parallel; gathers the sequence) -> q, k, v, lr, [momentum], ttt_scale logits
    attention:  RoPE(q, k) at absolute positions -> sliding-window causal attention over num_heads
    fast:       silu(q * scale + offset), silu(k * scale + offset), silu(v) -> L2 norm per fast
                head (q, k) -> RoPE as attention heads -> lact_swiglu (fp32 weights, one update per
                chunk) -> RMSNorm per fast head * silu(ttt_scale)
    attention + fast -> out_proj (row parallel; reduce-scatters the sequence) -> [T(/tp), B, D]

Attention and fast weights share q, k, v and their sum goes through one o_proj, so both live in
this one layer (a W layer beside a TTT layer would have projections of its own). A fast-weight
head's columns hold num_heads / lact_heads whole attention heads, so TP (and CP, by one
all-to-all as the other mixers) split both kinds of head alike. Everything between the
projections is per head; the RMSNorm's gain is shared by the heads, so replicated, its gradient
summed over TP.

Packed documents: attention stays within the document, the fast weights restart at its first
token (the op's `starts`) and the fast q/k rotate by positions counted from it, so a document
computes what it would alone. Decoding keeps the window's keys and values and the fast weights
(models/inference_cache.py): tokens gather until their chunk completes, then one update.
"""

import functools
import math

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from torch import nn

from megatron_ttt.models.attention import cached_keys
from megatron_ttt.models.columns import lact_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import FastWeights, MixerCache
from megatron_ttt.models.layers import (
    ProjectionSubmodules,
    RopeTables,
    build_projections,
    projected_parts,
    replicated_weight,
    rms_normalized,
    rotate_halves,
    stat_dtype,
)
from megatron_ttt.models.packing import Packing
from megatron_ttt.models.sharding import mixer_sharded_state_dict
from megatron_ttt.ops.attention import causal_attention
from megatron_ttt.ops.lact import lact_step, lact_swiglu, swiglu_apply, where_rows
from megatron_ttt.parallel.context import context_group, heads_to_sequence, local_slice, sequence_to_heads
from megatron_ttt.run_options import InnerLoopOptions

BASE_LR = 0.001
"""LaCT's "mamba" lr parameterisation: lr = softplus(logit + inv_softplus(BASE_LR))."""
INV_SOFTPLUS_BASE_LR = BASE_LR + math.log(-math.expm1(-BASE_LR))
L2_EPS = 1e-5
"""LaCT's l2_norm: x / (||x|| + eps)."""
TTT_NORM_EPS = 1e-5
"""fla's RMSNorm default, which LaCT's ttt_norm keeps."""
IDENTITY_GAIN = 0.5
"""A low-rank initial w0, w2 is left @ right + 0.5 I (LaCT's LowRankFastWeight)."""


class LaCTMixer(MegatronModule):
    """LaCT's layer over this rank's fast-weight heads and the attention heads inside them."""

    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig,
                 pg_collection: ProcessGroupCollection, inner_loop: InnerLoopOptions = InnerLoopOptions(),
                 layer_number: int = 1):
        super().__init__(config)
        if ttt.layer_type != "lact":
            raise ValueError(f"LaCTMixer built with layer_type {ttt.layer_type!r}")
        tp, cp = config.tensor_model_parallel_size, config.context_parallel_size
        if ttt.lact_heads % (tp * cp):
            raise ValueError(f"tensor_parallel={tp} x context_parallel={cp} does not divide the {ttt.lact_heads} "
                             "fast-weight heads (model.lact_heads)")
        self.ttt, self.inner_loop, self.layer_number, self.tp_size = ttt, inner_loop, layer_number, tp
        self.tp_group, self.cp_group = pg_collection.tp, context_group(config, pg_collection)
        self.local_heads = ttt.lact_heads // tp
        """Fast-weight heads of this TP rank (its projections' width); each CP rank runs 1/cp of them."""
        self.heads = self.local_heads // cp
        """Fast-weight heads this rank runs."""
        self.columns = lact_columns(ttt)
        self._rope = RopeTables(ttt.head_dim, ttt.rope_theta)
        self.in_proj, self.out_proj = build_projections(submodules, config, self.tp_group, ttt.hidden_size,
                                                        self.columns.width(), ttt.hidden_size,
                                                        ("lact_in_proj", "lact_out_proj"))
        self._allocate_head_params(config.params_dtype)

    def _allocate_head_params(self, dtype: torch.dtype) -> None:
        """Allocated only: models/build.py fills each as the parameter table says."""
        ttt, H = self.ttt, self.local_heads
        d_in, d_h, rank = ttt.lact_head_dim, ttt.lact_hidden, ttt.lact_fw_rank

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=dtype))

        self.lr_bias, self.ttt_scale_bias = param(3 * H), param(H)
        if ttt.lact_momentum:
            self.momentum_bias = param(H)
        self.qk_scale, self.qk_offset = param(H * d_in, 2), param(H * d_in, 2)
        # Shared by all heads, so replicated; its gradient is summed over TP in _fast().
        self.ttt_norm_weight = param(d_in)
        for name in ("w0", "w2"):
            if rank:
                setattr(self, f"{name}_left", param(H, d_h, rank))
                setattr(self, f"{name}_right", param(H, rank, d_in))
            else:
                setattr(self, name, param(H, d_h, d_in))
        self.w1 = param(H, d_in, d_h)

    def _mine(self, param: torch.Tensor) -> torch.Tensor:
        """A per-head parameter's rows (dim 0) of the heads this rank runs (all of them at CP 1)."""
        return local_slice(param, 0, self.cp_group)

    def initial_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """w0, w1, w2 [heads, ...] of the heads this rank runs, in the state's dtype (fp32 at least)."""
        dtype = stat_dtype(self.w1)

        def low_rank(name: str) -> torch.Tensor:
            if not self.ttt.lact_fw_rank:
                return self._mine(getattr(self, name))
            w = self._mine(getattr(self, f"{name}_left")) @ self._mine(getattr(self, f"{name}_right"))
            return w + IDENTITY_GAIN * torch.eye(*w.shape[1:], dtype=w.dtype, device=w.device)

        return tuple(w.to(dtype) for w in (low_rank("w0"), self._mine(self.w1), low_rank("w2")))

    def _sequence_to_heads(self, parts: dict) -> dict:
        """This rank's tokens of every component -> whole sequences of this rank's heads, in one all-to-all."""
        T, B = parts["q"].shape[:2]
        per_head = [parts[n].reshape(T, B, self.local_heads, -1) for n in self.columns.names]
        moved = sequence_to_heads(torch.cat(per_head, dim=-1), self.cp_group)
        widths = [t.shape[-1] for t in per_head]
        return {n: t.flatten(2) for n, t in zip(self.columns.names, moved.split(widths, dim=-1))}

    def forward(self, hidden_states: torch.Tensor, cache: MixerCache | None = None,
                packing: Packing | None = None) -> torch.Tensor:
        """[T(/tp), B, D] pre-normed hidden states -> [T(/tp), B, D]; with a cache the tokens
        continue the cached sequence and the cache moves past them; with a packing (the whole
        sequence's) every document computes alone."""
        parts = projected_parts(self, hidden_states, cache)
        T, B = parts["q"].shape[:2]
        start = cache.tokens if cache is not None else 0
        absolute = (start + torch.arange(T, device=hidden_states.device)).expand(B, T)
        positions = absolute if packing is None else packing.since_start
        mixed = (self._attention(parts, absolute, start, cache, packing)
                 + self._fast(parts, positions, cache, packing))
        if cache is not None:
            cache.tokens += T
        out = heads_to_sequence(mixed.reshape(T, B, self.heads, -1), self.cp_group).flatten(2)
        y, _ = self.out_proj(out)
        return y

    def _rotated(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[T, B, heads*d] -> [B, attention heads, T, d], RoPE at positions [B, T]."""
        T, B = x.shape[:2]
        d = self.ttt.head_dim
        cos, sin = self._rope(int(positions.max()) + 1, x.dtype, x.device)
        heads = x.reshape(T, B, -1, d).permute(1, 2, 0, 3)
        return rotate_halves(heads, cos[positions][:, None], sin[positions][:, None])

    def _attention(self, parts: dict, absolute: torch.Tensor, start: int, cache: MixerCache | None,
                   packing: Packing | None) -> torch.Tensor:
        """Sliding-window attention of the attention heads: [T, B, heads*d], RoPE at the absolute
        positions [B, T] (from `start`, the first token's)."""
        T, B = parts["q"].shape[:2]
        q, k = self._rotated(parts["q"], absolute), self._rotated(parts["k"], absolute)
        v = parts["v"].reshape(T, B, -1, self.ttt.head_dim).permute(1, 2, 0, 3)
        segments = None if packing is None else packing.segments
        if cache is not None:
            k, v, segments = cached_keys(k, v, segments, cache, self.ttt.attention_window)
        out = causal_attention(q, k, v, self.ttt.attention_window, start, segments=segments)
        return out.permute(2, 0, 1, 3).flatten(2)

    def _fast_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, heads*w] -> [B*heads, T, w] (LaCT's "(b n_h) s d" rows)."""
        T, B = x.shape[:2]
        return x.reshape(T, B, self.heads, -1).permute(1, 2, 0, 3).flatten(0, 1)

    def _fast(self, parts: dict, positions: torch.Tensor, cache: MixerCache | None,
              packing: Packing | None) -> torch.Tensor:
        """The fast weights' output [T, B, heads*d_fw]: the op (or, with a cache, the decoder) on
        LaCT's fast q, k, v and rates, then the per-head RMSNorm times silu(ttt_scale)."""
        T, B = parts["q"].shape[:2]
        q, k, v = self._fast_qkv(parts, positions)
        lrs, momentum = self._rates(parts)
        starts = None if packing is None else packing.starts.repeat_interleave(self.heads, dim=0)
        if cache is not None:
            o = self._decode(q, k, v, lrs, momentum, starts, cache)
        else:
            initial = tuple(w.repeat(B, 1, 1) for w in self.initial_weights())
            o = lact_swiglu(*initial, q, k, v, *lrs, self.ttt.lact_chunk_size, self.ttt.lact_muon, momentum,
                            starts=starts, time_checkpoint_group=self.inner_loop.time_checkpoint_group,
                            compile=self.inner_loop.backend == "compile")
        normed = rms_normalized(o, TTT_NORM_EPS)
        gain = replicated_weight(self.ttt_norm_weight, self.tp_size > 1, self.tp_group)
        scaled = normed * gain * self._fast_heads(F.silu(parts["ttt_scale"] + self._mine(self.ttt_scale_bias)))
        return scaled.unflatten(0, (B, self.heads)).permute(2, 0, 1, 3).flatten(2)

    def _fast_qkv(self, parts: dict, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The op's q, k, v [B*heads, T, d_fw]: silu(q * scale + offset) (k alike) and silu(v);
        q and k L2-normed per fast head, then rotated as attention heads at `positions`."""
        scale, offset = self._mine(self.qk_scale), self._mine(self.qk_offset)
        q = F.silu(parts["q"] * scale[:, 0] + offset[:, 0])
        k = F.silu(parts["k"] * scale[:, 1] + offset[:, 1])
        q, k = (self._rotated(self._l2_per_head(x), positions).permute(2, 0, 1, 3).flatten(2) for x in (q, k))
        return tuple(self._fast_heads(x) for x in (q, k, F.silu(parts["v"])))

    def _rates(self, parts: dict) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The per-token lrs of w0, w1, w2 (softplus, LaCT's "mamba" parameterisation) and momentum
        coefficients (sigmoid; None without momentum), each [B*heads, T, 1] in the state's dtype."""
        dtype = stat_dtype(self.w1)
        lr = F.softplus((parts["lr"] + self._mine(self.lr_bias)).to(dtype) + INV_SOFTPLUS_BASE_LR)
        momentum = None
        if self.ttt.lact_momentum:
            momentum = self._fast_heads(torch.sigmoid(parts["momentum"] + self._mine(self.momentum_bias)).to(dtype))
        return self._fast_heads(lr).split(1, dim=-1), momentum

    def _l2_per_head(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, heads*d_fw], each fast head's vector divided by (its L2 norm + eps)."""
        heads = x.unflatten(-1, (self.heads, -1))
        norm = heads.to(stat_dtype(x)).norm(dim=-1, keepdim=True)
        return (heads / (norm + L2_EPS)).to(x.dtype).flatten(-2)

    def _decode(self, q, k, v, lrs, momentum, starts, cache: MixerCache) -> torch.Tensor:
        """The op's output for these tokens continuing the cached ones, in spans: a span's tokens
        read the current weights and join their chunk, and a completed chunk updates its rows
        (lact_step); a row whose document begins restarts from the initial weights. A span runs
        to its chunk's end where every row stands at the same place in its chunk and no document
        begins inside it (a prompt without EOS), else it is one token."""
        dtype, N, C = stat_dtype(self.w1), q.shape[0], self.ttt.lact_chunk_size
        inputs = {"k": k, "v": v, "lr0": lrs[0], "lr1": lrs[1], "lr2": lrs[2]}
        if momentum is not None:
            inputs["momentum"] = momentum
        inputs = {n: t.to(dtype) for n, t in inputs.items()}

        @functools.cache
        def initial() -> tuple:  # only where a row starts afresh
            return tuple(w.repeat(N // self.heads, 1, 1) for w in self.initial_weights())

        if cache.fast is None:
            cache.fast = FastWeights(initial(), tuple(torch.zeros_like(w) for w in initial()) if momentum is not None
                                     else (), tuple(w.norm(dim=-1, keepdim=True) for w in initial()),
                                     {n: t.new_zeros(N, C, t.shape[-1]) for n, t in inputs.items()},
                                     torch.zeros(N, dtype=torch.long, device=q.device))
        state = cache.fast
        outputs, t, T = [], 0, q.shape[1]
        while t < T:
            if starts is not None and bool(starts[:, t].any()):
                fresh = starts[:, t]
                state.weights = where_rows(fresh, initial(), state.weights)
                state.velocity = tuple(torch.where(fresh[:, None, None], 0, m) for m in state.velocity)
                state.filled = torch.where(fresh, 0, state.filled)
            length = _span(state.filled, starts, t, T, C)
            outputs.append(swiglu_apply(state.weights, q[:, t:t + length].to(dtype)))
            _join(state, {n: x[:, t:t + length] for n, x in inputs.items()})
            complete = state.filled == C
            if bool(complete.any()):
                chunk = state.chunk
                weights, velocity = lact_step(state.weights, state.velocity, state.norms, chunk["k"], chunk["v"],
                                              (chunk["lr0"], chunk["lr1"], chunk["lr2"]), chunk.get("momentum"),
                                              self.ttt.lact_muon)
                state.weights = where_rows(complete, weights, state.weights)
                state.velocity = where_rows(complete, velocity, state.velocity)
                state.filled = torch.where(complete, 0, state.filled)
            t += length
        return torch.cat(outputs, dim=1).to(v.dtype)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """Per-head tensors split over TP along dim 0 (the norm's gain replicated); the fused
        in-projection stored by component."""
        return mixer_sharded_state_dict(self, prefix, sharded_offsets, metadata, replicated="ttt_norm_weight")


def _span(filled: torch.Tensor, starts: torch.Tensor | None, t: int, T: int, C: int) -> int:
    """Tokens from t that run as one span: to the chunk's end (or the tokens' end, or the next
    document's start) where every row stands at the same place in its chunk, else 1."""
    first = int(filled[0])
    if not bool((filled == first).all()):
        return 1
    length = min(C - first, T - t)
    if starts is not None and length > 1:
        later = starts[:, t + 1:t + length].any(dim=0).nonzero()
        length = int(later[0]) + 1 if len(later) else length
    return length


def _join(state: FastWeights, span: dict[str, torch.Tensor]) -> None:
    """A span's per-token inputs [N, L, w] written into the rows' current chunks after their
    `filled` tokens (one token: each row at its own place)."""
    length = next(iter(span.values())).shape[1]
    if length == 1:
        rows = torch.arange(state.filled.shape[0], device=state.filled.device)
        state.chunk = {n: state.chunk[n].index_put((rows, state.filled), x[:, 0]) for n, x in span.items()}
    else:
        first = int(state.filled[0])
        state.chunk = {n: torch.cat((state.chunk[n][:, :first], x, state.chunk[n][:, first + length:]), dim=1)
                       for n, x in span.items()}
    state.filled = state.filled + length
