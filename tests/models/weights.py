"""Random reference-format weights for the model tests."""

import torch

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.parameter_table import reference_shapes


def random_reference_weights(cfg: TTTModelConfig, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Weights at the reference's scales (0.02 for linears, embedding and inner weights, the
    conv1d default for convolutions), with the tensors the reference starts constant (norm gains
    and biases, lr bias, token offsets, LaCT's qk scales) perturbed, so that every parameter changes
    the output."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in reference_shapes(cfg).items():
        gain = name.endswith(("norm.weight", "ttt_norm_weight", "qk_scale"))
        if ".conv" in name and "norm" not in name:
            std = shape[-1] ** -0.5 if name.endswith("weight") else 0.3
        else:
            std = 0.1 if gain or name.endswith(("bias", "token_idx")) else cfg.init_std
        weights[name] = (1.0 if gain else 0.0) + std * torch.randn(shape, generator=g, dtype=dtype)
    return weights
