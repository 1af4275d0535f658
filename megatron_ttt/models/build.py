"""Building the model: megatron-core's config from ours, the modules at the current
tensor-parallel size, and initialization that does not depend on the parallel layout.

The modules only allocate their parameters; initialization fills every one from its rule in the
parameter table (models/parameter_table.py). Every reference-format tensor is drawn whole from a
generator seeded by (seed, its name), as the reference initializes it, and each rank keeps its
shard. So TP=1 and TP=4 (and any DP size) start from the same weights, one tensor in memory at a
time, and building draws nothing from torch's or megatron-core's random streams.
"""

import zlib

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes
from megatron.core.transformer import TransformerConfig

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameter_table import Rule, Shape, rules
from megatron_ttt.models.parameters import local_tensor
from megatron_ttt.run_options import InnerLoopOptions


def megatron_config(model: TTTModelConfig, tensor_parallel: int = 1, sequence_parallel: bool = False,
                    params_dtype: torch.dtype = torch.float32, cpu_init: bool | None = None,
                    context_parallel: int = 1) -> TransformerConfig:
    """The megatron-core config the parallel layers read (sizes, TP/SP/CP, dtype). Its layers only
    allocate their parameters (perform_initialization off): build_model fills every one."""
    return TransformerConfig(
        num_layers=model.num_layers, hidden_size=model.hidden_size, num_attention_heads=model.num_heads,
        ffn_hidden_size=model.intermediate_size, tensor_model_parallel_size=tensor_parallel,
        context_parallel_size=context_parallel, cp_comm_type="a2a" if context_parallel > 1 else None,
        sequence_parallel=sequence_parallel and tensor_parallel > 1, params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16, fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available() if cpu_init is None else cpu_init,
        perform_initialization=False,
        init_method_std=model.init_std, add_bias_linear=False, gated_linear_unit=True,
        normalization="RMSNorm", layernorm_epsilon=model.rms_norm_eps, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, hidden_dropout=0.0, attention_dropout=0.0,
        cuda_graph_scope=[])


def build_model(cfg: TTTModelConfig, groups: ProcessGroupCollection,
                inner_loop: InnerLoopOptions = InnerLoopOptions(), params_dtype: torch.dtype = torch.float32,
                sequence_parallel: bool = False, init_seed: int | None = None) -> TTTLanguageModel:
    """The model split over `groups` (parallel/setup.py: its TP and CP groups), running its inner
    loop as `inner_loop` says. With `init_seed`, every parameter is drawn once, from its rule in the
    parameter table; with None, the parameters are only allocated: the caller fills every
    parameter (loading). Either way each is tagged with its TP split (`tag_tensor_parallel`)."""
    tp = dist.get_world_size(groups.tp)
    config = megatron_config(cfg, tp, sequence_parallel, params_dtype, context_parallel=dist.get_world_size(groups.cp))
    model = TTTLanguageModel(config, cfg, groups, inner_loop)
    tag_tensor_parallel(model)
    if init_seed is not None:
        initialize(model, init_seed, dist.get_rank(groups.tp), tp)
    return model


def tag_tensor_parallel(model: TTTLanguageModel) -> None:
    """megatron-core's TP attributes on every parameter the table splits over TP (its linears set
    them only when they initialize themselves): gradient norms (the trainer's, DeepSpeed's
    clipping) count those on every TP rank and the replicated ones once."""
    params = dict(model.named_parameters())
    for rule in rules(model.ttt):
        if rule.split_dim is not None:
            set_tensor_model_parallel_attributes(params[rule.ours], True, rule.split_dim, 1)


def reference_init(rule: Rule, name: str, shape: Shape, cfg: TTTModelConfig, seed: int) -> torch.Tensor:
    """One reference tensor as the reference initializes it."""
    if rule.init == "ones":
        return torch.ones(shape)
    if rule.init == "zeros":
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if rule.init == "conv":
        bound = 1.0 / cfg.conv_kernel ** 0.5  # weight and bias, as nn.Conv1d (fan-in = kernel)
        return (torch.rand(shape, generator=g) * 2 - 1) * bound
    return torch.randn(shape, generator=g) * (cfg.init_std if rule.std is None else rule.std)


@torch.no_grad()
def initialize(model: TTTLanguageModel, seed: int, tp_rank: int, tp_size: int) -> None:
    """Fill every parameter with this TP rank's part of its reference tensor(s), drawn whole."""
    cfg, params = model.ttt, dict(model.named_parameters())
    for rule in rules(cfg):
        shapes = dict(zip(rule.refs, rule.shapes))
        local = local_tensor(rule, lambda name: reference_init(rule, name, shapes[name], cfg, seed), tp_rank, tp_size)
        params[rule.ours].copy_(local)
