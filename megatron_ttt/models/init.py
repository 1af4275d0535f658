"""Initialization that does not depend on the parallel layout.

Every reference-format tensor is drawn whole from a generator seeded by (seed, its name), as the
reference initializes it, and each rank keeps its shard. So TP=1 and TP=4 (and any DP size) start
from the same weights, one tensor in memory at a time.
"""

import zlib

import torch

from megatron_ttt.checkpoint.reference_format import local_tensor, reference_shapes, rules
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel


def reference_init(name: str, shape: tuple[int, ...], cfg: TTTModelConfig, seed: int) -> torch.Tensor:
    """One tensor as the reference initializes it: normal(0, init_std) for linears, embedding,
    lr weights and inner weights; the nn.Conv1d default for convolutions; ones for norm gains;
    zeros for biases and token offsets."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if ".conv" in name and "norm" not in name:
        bound = 1.0 / cfg.conv_kernel ** 0.5  # weight and bias, as nn.Conv1d (fan-in = kernel)
        return (torch.rand(shape, generator=g) * 2 - 1) * bound
    if name.endswith(("norm.weight", "ttt_norm_weight")):
        return torch.ones(shape)
    if name.endswith(("bias", "learnable_token_idx")) or name.split(".")[-1] in ("b1", "b2"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=g) * cfg.init_std


@torch.no_grad()
def initialize(model: TTTLanguageModel, seed: int, tp_rank: int, tp_size: int) -> None:
    cfg, shapes = model.ttt, reference_shapes(model.ttt)
    params = dict(model.named_parameters())
    for rule in rules(cfg):
        local = local_tensor(rule, lambda name: reference_init(name, shapes[name], cfg, seed), tp_rank, tp_size)
        params[rule.ours].copy_(local)
