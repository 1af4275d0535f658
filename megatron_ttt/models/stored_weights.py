"""Decoding with the large matrices stored in fewer bytes: a decode step is memory-bound (every
weight is read once per token), so its floor is the bytes it reads.

- fp32: as trained.
- bf16: the projections and the head in bfloat16, multiplied in bfloat16 (float32 accumulation
  inside the kernel, the output rounded to bfloat16 and widened back).
- int8: weight-only quantisation, per output channel: w ~ q * s, q int8 in [-127, 127],
  s = max |w[row]| / 127 (in bfloat16). On a CPU through torch's int8 weight-only kernel
  (aten._weight_int8pack_mm, the activation in bfloat16); elsewhere dequantised inside the matmul,
  (x q^T) * s, which is also the kernel's exact twin in the tests.

The projections are each layer's in/out projections (TTT or attention) and its MLP's fc1/fc2, and
the head (tied to the embedding or not: the largest matrix at a 32k vocabulary). The embedding
stays float32: a token reads one row of it. Norms, convolutions, gates and TTT's inner-loop
weights and state stay float32: small, and the inner loop's updates need the precision.
"""

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import nn

WEIGHT_FORMATS = ("fp32", "bf16", "int8")
PROJECTIONS = ("in_proj", "out_proj", "fc1", "fc2")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int8 [N, K], scales bfloat16 [N]) with weight ~ q * scales[:, None]: the
    scales in the kernel's dtype, and q rounded against those very scales."""
    scales = (weight.detach().float().abs().amax(dim=1).clamp(min=1e-12) / 127).bfloat16()
    return torch.round(weight.detach().float() / scales.float()[:, None]).clamp(-127, 127).to(torch.int8), scales


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] float -> [..., N] float32: x (q * scales)^T, by torch's CPU kernel where it runs."""
    if x.device.type == "cpu":
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).bfloat16(), q, scales)
        return out.float().reshape(*x.shape[:-1], q.shape[0])
    return dequantized_int8_linear(x, q, scales)


def dequantized_int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The obviously correct twin: the int8 values widened, multiplied, then scaled per column."""
    return F.linear(x.float(), q.float()) * scales.float()


class StoredWeightLinear(nn.Module):
    """A bias-free linear whose weight is stored as `fmt` (bf16 or int8), called as megatron-core's
    parallel linears are: `(output, None)`; a `weight` passed in (the tied head's) is ignored, since
    this module holds its own copy of it. Weights are parameters without gradients, so
    `model.parameters()` (the compiled decoder's inputs) carries them."""

    def __init__(self, weight: torch.Tensor, fmt: str):
        super().__init__()
        self.fmt = fmt
        if fmt == "bf16":
            self.weight = nn.Parameter(weight.detach().bfloat16(), requires_grad=False)
        elif fmt == "int8":
            q, scales = quantize_int8(weight)
            self.weight = nn.Parameter(q, requires_grad=False)
            self.scales = nn.Parameter(scales, requires_grad=False)
        else:
            raise ValueError(f"stored weights are bf16 or int8, not {fmt!r}")

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if self.fmt == "bf16":
            return F.linear(x.bfloat16(), self.weight).to(x.dtype), None
        return int8_linear(x, self.weight, self.scales).to(x.dtype), None


def store_weights(model, fmt: str):
    """Replace `model`'s projections and head by StoredWeightLinear in format `fmt`, in place
    (fp32: unchanged); returns the model. At tensor-parallel size 1 (the row-parallel projections'
    sum over ranks is megatron-core's)."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"weights are one of {WEIGHT_FORMATS}, not {fmt!r}")
    if fmt == "fp32":
        return model
    if model.config.tensor_model_parallel_size != 1:
        raise ValueError(f"{fmt} weights decode at tensor_model_parallel_size 1, got "
                         f"{model.config.tensor_model_parallel_size}")
    for module in list(model.modules()):
        for name in PROJECTIONS:
            child = getattr(module, name, None)
            if isinstance(child, (ColumnParallelLinear, RowParallelLinear)):
                setattr(module, name, StoredWeightLinear(child.weight, fmt))
    head = model.embedding.weight if model.ttt.tie_word_embeddings else model.output_layer.weight
    model.output_layer = StoredWeightLinear(head, fmt)
    return model


def bytes_per_token(model, cache_bytes: int) -> int:
    """What one decode step reads at least: every weight once in its stored dtype, the embedding's
    one row (plus all of it where the head is the tied float32 embedding), and the cache read and
    written once."""
    embedding = model.embedding.weight
    total = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if p is not embedding)
    head_reads_embedding = model.ttt.tie_word_embeddings and not isinstance(model.output_layer, StoredWeightLinear)
    total += embedding.numel() * embedding.element_size() if head_reads_embedding else \
        embedding.shape[1] * embedding.element_size()
    return total + 2 * cache_bytes
