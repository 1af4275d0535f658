"""The pre-norm block: [h += conv(RMSNorm(h))]; h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h)).
The mixer is a TTT layer or, in a hybrid model, causal attention (models/spec.py)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import nn

from megatron_ttt.models.columns import mlp_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import BlockCache
from megatron_ttt.models.layers import (
    ProjectionSubmodules,
    RMSNorm,
    causal_depthwise_conv,
    parallel_linear_args,
    replicated_weight,
    streaming_causal_conv,
)
from megatron_ttt.models.lact_mixer import LaCTMixer
from megatron_ttt.models.mixer import TTTMixer
from megatron_ttt.models.packing import Packing
from megatron_ttt.models.sharding import ensure_metadata_has_dp_cp_group, with_fused_weight
from megatron_ttt.parallel.context import context_group, local_slice, with_previous_rows
from megatron_ttt.run_options import InnerLoopOptions


class SwiGLUMLP(MegatronModule):
    def __init__(self, config: TransformerConfig, submodules: ProjectionSubmodules, ttt: TTTModelConfig,
                 tp_group: torch.distributed.ProcessGroup | None = None):
        super().__init__(config)
        self.tp_size = config.tensor_model_parallel_size
        self.columns = mlp_columns(ttt)
        linear = parallel_linear_args(config, tp_group)
        self.fc1 = build_module(submodules.in_proj, ttt.hidden_size, self.columns.width(), gather_output=False,
                                tp_comm_buffer_name="fc1", **linear)
        self.fc2 = build_module(submodules.out_proj, ttt.intermediate_size, ttt.hidden_size, input_is_parallel=True,
                                tp_comm_buffer_name="fc2", **linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.fc1(x)
        parts = self.columns.split(h, self.tp_size)
        y, _ = self.fc2(F.silu(parts["gate"]) * parts["up"])
        return y

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        sharded = with_fused_weight(self.fc1, f"{prefix}fc1.", self.columns, self.tp_size, sharded_offsets, metadata)
        return sharded | self.fc2.sharded_state_dict(f"{prefix}fc2.", sharded_offsets, metadata)


class PreConv(nn.Module):
    """h -> conv(RMSNorm(h)): a causal depthwise convolution over the full width, replicated on
    every TP rank. Under sequence parallelism the normed tokens are gathered (the convolution
    looks back conv_kernel - 1 tokens, across the ranks' boundaries) and each rank keeps the
    outputs of its own tokens; so the input gradient is reduce-scattered and the conv's
    parameter gradients are summed over TP, like the norms'. Under context parallelism the
    convolution runs here, outside the mixer's all-to-all, on this rank's T/CP tokens with the
    previous rank's last conv_kernel - 1 in front (a halo of (K - 1) x B x D values per layer,
    where moving it inside the all-to-all would trade all D channels of every token). Packed
    documents (models/packing.py) see zeros before their first token."""

    def __init__(self, config: TransformerConfig, ttt: TTTModelConfig, pg_collection: ProcessGroupCollection):
        super().__init__()
        self.sequence_parallel, self.tp_group = config.sequence_parallel, pg_collection.tp
        self.cp_group = context_group(config, pg_collection)
        self.norm = RMSNorm(ttt.hidden_size, ttt.rms_norm_eps, config.params_dtype, config.sequence_parallel,
                            self.tp_group)
        self.weight = nn.Parameter(torch.empty(ttt.hidden_size, 1, ttt.conv_kernel, dtype=config.params_dtype))
        self.bias = nn.Parameter(torch.empty(ttt.hidden_size, dtype=config.params_dtype))

    def forward(self, h: torch.Tensor, cache: BlockCache | None = None, packing: Packing | None = None) -> torch.Tensor:
        x = self.norm(h)
        since_start = None if packing is None else packing.since_start
        if cache is not None:
            y, cache.pre_conv = streaming_causal_conv(x, self.weight, self.bias, cache.pre_conv, since_start)
            return y
        if not self.sequence_parallel:
            return self._conv(x, self.weight, self.bias, since_start)
        full = gather_from_sequence_parallel_region(x, group=self.tp_group)
        weight, bias = (replicated_weight(p, True, self.tp_group) for p in (self.weight, self.bias))
        y = self._conv(full, weight, bias, since_start)
        rank = torch.distributed.get_rank(self.tp_group)
        return y.chunk(torch.distributed.get_world_size(self.tp_group), dim=0)[rank]

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              since_start: torch.Tensor | None) -> torch.Tensor:
        """The causal convolution of this rank's tokens (under CP, continuing the previous rank's;
        `since_start` is the whole sequence's)."""
        if self.cp_group is None:
            return causal_depthwise_conv(x, weight, bias, since_start)
        halo = weight.shape[-1] - 1
        if since_start is not None:
            # The halo rows' own outputs are dropped, so their positions are never read.
            mine = local_slice(since_start, 1, self.cp_group)
            since_start = torch.cat((mine.new_zeros(mine.shape[0], halo), mine), dim=1)
        return causal_depthwise_conv(with_previous_rows(x, halo, self.cp_group), weight, bias, since_start)[halo:]


@dataclass
class TTTBlockSubmodules:
    """A block's two sublayers, each after its own RMSNorm (the pre-conv is built from the config)."""

    mixer: ModuleSpec | type = None
    """The sequence mixer: a TTT layer or attention (models/spec.py, by the layer pattern)."""
    mlp: ModuleSpec | type = None
    """The SwiGLU MLP."""


class TTTBlock(MegatronModule):
    def __init__(self, config: TransformerConfig, submodules: TTTBlockSubmodules, ttt: TTTModelConfig,
                 pg_collection: ProcessGroupCollection, inner_loop: InnerLoopOptions = InnerLoopOptions(),
                 layer_number: int = 1):
        super().__init__(config)
        tp_group = pg_collection.tp
        self.layer_number = layer_number
        dtype, sp = config.params_dtype, config.sequence_parallel
        self.pre_conv = PreConv(config, ttt, pg_collection) if ttt.pre_conv else None
        self.seq_norm = RMSNorm(ttt.hidden_size, ttt.rms_norm_eps, dtype, sp, tp_group)
        run = {"inner_loop": inner_loop} if issubclass(submodules.mixer.module, (TTTMixer, LaCTMixer)) else {}
        self.mixer = build_module(submodules.mixer, config=config, ttt=ttt, layer_number=layer_number,
                                  pg_collection=pg_collection, **run)
        self.ffn_norm = RMSNorm(ttt.hidden_size, ttt.rms_norm_eps, dtype, sp, tp_group)
        self.mlp = build_module(submodules.mlp, config=config, ttt=ttt, tp_group=tp_group)

    def forward(self, h: torch.Tensor, cache: BlockCache | None = None, packing: Packing | None = None) -> torch.Tensor:
        """[T(/tp), B, D] -> [T(/tp), B, D]; with a cache, the tokens continue its sequence (and
        the cache moves past them); with a packing (models/packing.py), every document afresh."""
        if self.pre_conv is not None:
            h = h + self.pre_conv(h, cache, packing)
        h = h + self.mixer(self.seq_norm(h), None if cache is None else cache.mixer, packing)
        return h + self.mlp(self.ffn_norm(h))
