"""Small layers of the TTT block: RMSNorm, causal depthwise convolution, RoPE in mini-batches,
and the tensor-parallel-exact LayerNorm over all heads."""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import nn


def parallel_linear_args(config, tp_group) -> dict:
    """What every column- and row-parallel linear of ours shares: no bias, the bias never added
    inside, this model's tensor-parallel group (megatron-core asks for an init method; with
    perform_initialization off it never calls it)."""
    return dict(config=config, init_method=config.init_method, bias=False, skip_bias_add=True, is_expert=False,
                tp_group=tp_group)


@dataclass
class ProjectionSubmodules:
    """A layer's projections: the mixers' (TTT or attention) in and out, the SwiGLU MLP's fc1 and fc2."""

    in_proj: ModuleSpec | type = None
    """Column-parallel fused in-projection (megatron-core ColumnParallelLinear)."""
    out_proj: ModuleSpec | type = None
    """Row-parallel out-projection (megatron-core RowParallelLinear)."""


def build_projections(submodules: ProjectionSubmodules, config, tp_group, hidden: int, fused_width: int,
                      out_width: int, buffer_names: tuple[str, str]):
    """A sublayer's column-parallel in-projection (hidden -> fused_width, split, not gathered) and
    row-parallel out-projection (out_width, split -> hidden), as submodules name them."""
    linear = parallel_linear_args(config, tp_group)
    return (build_module(submodules.in_proj, hidden, fused_width, gather_output=False,
                         tp_comm_buffer_name=buffer_names[0], **linear),
            build_module(submodules.out_proj, out_width, hidden, input_is_parallel=True,
                         tp_comm_buffer_name=buffer_names[1], **linear))


def projected_parts(mixer, hidden_states: torch.Tensor, cache) -> dict[str, torch.Tensor]:
    """A TTT or LaCT mixer's in-projection of hidden_states by component ([T, B, width / tp] each)
    and, under context parallelism, moved to whole sequences of the rank's heads by the mixer's
    `_sequence_to_heads` (a cache, for inference, needs CP 1)."""
    projected, _ = mixer.in_proj(hidden_states)
    parts = mixer.columns.split(projected, mixer.tp_size)
    if mixer.cp_group is None:
        return parts
    if cache is not None:
        raise ValueError("inference with a cache runs at context_parallel 1")
    return mixer._sequence_to_heads(parts)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """megatron-core's row-parallel linear, its matmul given the layer's own TP group: megatron-core
    passes none there (the matmul itself never communicates), so every call looked the default
    group up and, on rank 0, warned; under torch.compile that warning split the graph."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        return super()._forward_impl(input, weight, *args, **(kwargs | {"tp_group": self.tp_group}))


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and angles in float32 at least (as the reference), float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def replicated_weight(weight: torch.Tensor, sequence_parallel: bool, group) -> torch.Tensor:
    """A replicated parameter used on this rank's sequence shard: its gradient here covers only
    these tokens, so the backward sums it over the TP group (identity forward). Every rank then
    holds the full gradient, whatever the optimizer does next (DeepSpeed ZeRO included)."""
    return copy_to_tensor_model_parallel_region(weight, group=group) if sequence_parallel else weight


class RMSNorm(nn.Module):
    """The reference's RMSNorm: statistics in float32, scaled by the weight in the input dtype (its
    gain allocated only: the parameter table fills it)."""

    def __init__(self, width: int, eps: float, dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                 tp_group=None):
        super().__init__()
        self.eps, self.sequence_parallel, self.tp_group = eps, sequence_parallel, tp_group
        self.weight = nn.Parameter(torch.empty(width, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return replicated_weight(self.weight, self.sequence_parallel, self.tp_group) * rms_normalized(x, self.eps)


def rms_normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x over the root mean square of its last dim, the statistics in float32, back in x's dtype."""
    x32 = x.to(stat_dtype(x))
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          since_start: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, B, C], weight [C, 1, K], bias [C] -> [T, B, C]: y_t = sum_k w[K-1-k] x_{t-k} + bias,
    with zeros before the first token. since_start [B, T] int64 (None: one sequence per row):
    tokens since the first token of each token's document; y_t then reads x_{t-k} only for
    k <= since_start[b, t], so every document starts from zeros."""
    T, kernel = x.shape[0], weight.shape[-1]
    y = F.conv1d(x.permute(1, 2, 0), weight, bias, padding=kernel - 1, groups=weight.shape[0])
    y = y[..., :T].permute(2, 0, 1)
    return y if since_start is None else _without_other_documents(y, x, weight, since_start)


def _without_other_documents(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                             since_start: torch.Tensor) -> torch.Tensor:
    """The convolution `y` of x [T, B, C] less the taps that read an earlier document. Only a
    document's first K - 1 tokens have such taps, so the fast convolution runs over everything
    and these few outputs are corrected (a masked sum over every token costs ~3x the conv)."""
    kernel = weight.shape[-1]
    tokens, rows = (since_start.t() < kernel - 1).nonzero(as_tuple=True)
    lags = torch.arange(kernel - 1, -1, -1, device=x.device)  # tap m reads token t - (K-1-m)
    read = tokens[:, None] - lags
    outside = (lags > since_start[rows, tokens][:, None]) & (read >= 0)
    taps = x[read.clamp_min(0), rows[:, None]] * outside[..., None]  # [n, K, C]
    correction = (taps * weight[:, 0, :].t()).sum(1)
    return y.index_put((tokens, rows), -correction, accumulate=True)


def streaming_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor | None,
                          since_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """causal_depthwise_conv of a sequence's next piece: `past` [K-1, B, C] holds the inputs
    before x (None: the sequence starts here, as the zero padding); since_start [B, T] is as
    causal_depthwise_conv's, counted across the pieces, so a document that began in an earlier
    piece reads `past` and one that begins in this piece does not. Returns y [T, B, C] and the
    last K-1 inputs (a copy, so no longer input is kept alive), the `past` of the next piece:
    always the inputs themselves, since the next piece's since_start says which of them it may read.
    A weighted sum over unfolded windows: for the few tokens of a decode step it is ~100x
    faster on CPU than F.conv1d."""
    kernel = weight.shape[-1]
    if past is None:
        past = x.new_zeros(kernel - 1, *x.shape[1:])
    window = torch.cat((past, x))
    return _tap_sum(window, weight, bias, since_start), window[window.shape[0] - (kernel - 1):].clone()


def _tap_sum(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             since_start: torch.Tensor | None) -> torch.Tensor:
    """The convolution of the inputs `window` [K-1+T, B, C] (the K-1 before the first output's
    token, then the T tokens') -> [T, B, C]; with since_start [B, T], only the taps that lie
    inside each output's document. The taps are a view (unfold), so autograd keeps no copy of
    them; the mask is [T, B, 1, K] bool."""
    kernel = weight.shape[-1]
    products = window.unfold(0, kernel, 1) * weight[:, 0, :]
    if since_start is not None:
        # unfold lays the taps oldest first: tap m of output t reads token t - (K-1-m).
        lags = torch.arange(kernel - 1, -1, -1, device=since_start.device)
        products = products.masked_fill(since_start.t()[:, :, None, None] < lags, 0)
    return products.sum(-1) + bias


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [len(positions), d/2] of the rotary angles, pair i turning by
    position * theta^(-2i/d); computed in stat_dtype, returned in `dtype`."""
    compute = torch.promote_types(dtype, torch.float32)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).to(compute) / head_dim
    angle = positions.to(compute)[:, None] * (1.0 / theta ** exponents)[None, :]
    return angle.cos().to(dtype), angle.sin().to(dtype)


class RopeTables:
    """cos and sin [n, d/2] of the rotary angles at positions 0..n-1 (rope_angles), computed once
    per dtype and device and regrown (to at least twice the size) when more positions are asked
    for: a decode step slices a table instead of recomputing its angles."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The angles at positions 0..length-1."""
        if torch.compiler.is_compiling():
            # Filling the cache inside a compiled block would change what its guards see after the
            # first call (one recompilation); the compiler folds the angles into the graph instead.
            return rope_angles(torch.arange(length, device=device), self.head_dim, self.theta, dtype)
        cos, sin = self._tables.get((dtype, device), (None, None))
        if cos is None or cos.shape[0] < length:
            size = max(length, 0 if cos is None else 2 * cos.shape[0])
            cos, sin = rope_angles(torch.arange(size, device=device), self.head_dim, self.theta, dtype)
            self._tables[(dtype, device)] = cos, sin
        return cos[:length], sin[:length]


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, d] with its interleaved pairs (x[2i], x[2i+1]) turned by the angles of cos, sin
    [T, d/2]: the JAX order the reference reproduces with its permute / rotate-half / un-permute."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


def rope_in_mini_batches(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor],
                         start: int | torch.Tensor = 0) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, d] at positions t mod b (t counted from `start`, the
    tokens before x, an int or a 0-d tensor (fixed-shape decoding); `table`: the angles at
    positions 0..b-1, from RopeTables)."""
    cos, sin = table
    T, b = x.shape[-2], cos.shape[0]
    if isinstance(start, torch.Tensor):
        position = torch.remainder(start + torch.arange(T, device=x.device), b)
        return rotate_pairs(x, cos[position], sin[position])
    first = start % b
    if first + T <= b:  # within one mini-batch (every decode step): a slice, no index tensor
        cos, sin = cos[first:first + T], sin[first:first + T]
    else:
        position = (start + torch.arange(T, device=x.device)) % b
        cos, sin = cos[position], sin[position]
    return rotate_pairs(x, cos, sin)


def head_parallel_layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                             full_width: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """LayerNorm over the last dim when it is split over the ranks of `group` (each holds some
    heads): the sums are all-reduced (with gradients), so every rank normalizes by the full
    width's statistics, exactly as one LayerNorm over all heads."""

    def total(t: torch.Tensor) -> torch.Tensor:
        s = t.sum(-1, keepdim=True)
        return dist_fn.all_reduce(s, group=group) if group is not None and dist.get_world_size(group) > 1 else s

    z32 = z.to(stat_dtype(z))
    centered = z32 - total(z32) / full_width
    variance = total(centered * centered) / full_width
    return (centered * torch.rsqrt(variance + eps)).to(z.dtype) * weight + bias


def rotate_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, d] with its halves' pairs (x[i], x[i + d/2]) turned by the angles of cos, sin
    [..., T, d/2]: the rotate-half order of GPT-NeoX and fla's RotaryEmbedding (LaCT's)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
