"""Building the model: megatron-core's config from ours, the modules at the current
tensor-parallel size, and initialization that does not depend on the parallel layout.

Every reference-format tensor is drawn whole from a generator seeded by (seed, its name), as its
rule in models/parameters.py says the reference initializes it, and each rank keeps its shard.
So TP=1 and TP=4 (and any DP size) start from the same weights, one tensor in memory at a time.
"""

import zlib

import torch
from megatron.core import parallel_state
from megatron.core.transformer import TransformerConfig

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import Rule, local_tensor, reference_shapes, rules
from megatron_ttt.run_options import InnerLoopOptions


def megatron_config(model: TTTModelConfig, tensor_parallel: int = 1, sequence_parallel: bool = False,
                    params_dtype: torch.dtype = torch.float32, cpu_init: bool | None = None,
                    module_init: bool = True, context_parallel: int = 1) -> TransformerConfig:
    """The megatron-core config the parallel layers read (sizes, TP/SP/CP, dtype, init). module_init
    False: the layers only allocate their parameters (whoever builds them fills every one)."""
    return TransformerConfig(
        num_layers=model.num_layers, hidden_size=model.hidden_size, num_attention_heads=model.num_heads,
        ffn_hidden_size=model.intermediate_size, tensor_model_parallel_size=tensor_parallel,
        context_parallel_size=context_parallel, cp_comm_type="a2a" if context_parallel > 1 else None,
        sequence_parallel=sequence_parallel and tensor_parallel > 1, params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16, fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available() if cpu_init is None else cpu_init,
        perform_initialization=module_init,
        init_method_std=model.init_std, add_bias_linear=False, gated_linear_unit=True,
        normalization="RMSNorm", layernorm_epsilon=model.rms_norm_eps, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, hidden_dropout=0.0, attention_dropout=0.0,
        cuda_graph_scope=[])


def build_model(cfg: TTTModelConfig, inner_loop: InnerLoopOptions = InnerLoopOptions(),
                params_dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                init_seed: int | None = None) -> TTTLanguageModel:
    """The model at the current tensor- and context-parallel sizes (parallel state must be initialized),
    running its inner loop as `inner_loop` says. With `init_seed`, every parameter is drawn once,
    from its rule (the modules only allocate); without, the modules' own random init."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    config = megatron_config(cfg, tp, sequence_parallel, params_dtype, module_init=init_seed is None,
                             context_parallel=parallel_state.get_context_parallel_world_size())
    model = TTTLanguageModel(config, cfg, inner_loop)
    if init_seed is not None:
        initialize(model, init_seed, parallel_state.get_tensor_model_parallel_rank(), tp)
    return model


def reference_init(rule: Rule, name: str, shape: tuple[int, ...], cfg: TTTModelConfig, seed: int) -> torch.Tensor:
    """One reference tensor as the reference initializes it."""
    if rule.init == "ones":
        return torch.ones(shape)
    if rule.init == "zeros":
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if rule.init == "conv":
        bound = 1.0 / cfg.conv_kernel ** 0.5  # weight and bias, as nn.Conv1d (fan-in = kernel)
        return (torch.rand(shape, generator=g) * 2 - 1) * bound
    return torch.randn(shape, generator=g) * cfg.init_std


@torch.no_grad()
def initialize(model: TTTLanguageModel, seed: int, tp_rank: int, tp_size: int) -> None:
    cfg, shapes = model.ttt, reference_shapes(model.ttt)
    params = dict(model.named_parameters())
    for rule in rules(cfg):
        local = local_tensor(rule, lambda name: reference_init(rule, name, shapes[name], cfg, seed), tp_rank, tp_size)
        params[rule.ours].copy_(local)
