"""Matmul FLOPs per token of the model, exact for every matrix product the code runs.

A product of [m,k] by [k,n] is 2 m k n FLOPs. Elementwise work (norms, activations, the
LayerNorm-L2 gradient, RoPE, the convolutions' few taps aside) is not counted: it is bound by
memory bandwidth, not by the matmul rate. Notation: D width, F SwiGLU width, H heads, d head
dim, b mini-batch, V vocabulary, K conv kernel. The inner loop's terms are per token and head
(a mini-batch's b x b products cost 2 b^2 d, i.e. 2 b d per token).
"""

from dataclasses import dataclass

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning.layout import Layout


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one layer, by part."""

    projections: float
    """Fused in-projection (q|v|gate|lr or q|k|v|lr: D -> 3D + H) and out-projection (D -> D)."""
    convolutions: float
    """Depthwise causal convolutions (q, k and the pre-conv; mamba backbone only): 2 D K each."""
    inner_model: float
    """The inner model on the keys and its gradient at the mini-batch's start: Linear k W (2 d^2);
    MLP k W1, x1 W2 and the backward through W2 (3 x 8 d^2)."""
    dual_form: float
    """Outputs in dual form: Linear q W (2 d^2), q k^T and (eta * A) G (2 b d each); MLP q W1, h W2
    (2 x 8 d^2), q k^T (2 b d), the first layer's mixing (8 b d), h x1^T (8 b d), the second's (2 b d)."""
    inner_update: float
    """The state's update: Linear x^T (lr G) (2 d^2) and lr^T G (2 d); MLP both layers (2 x 8 d^2, 2 x 5 d)."""
    mlp: float
    """SwiGLU: gate and up (2 x 2 D F), down (2 D F)."""

    @property
    def ttt(self) -> float:
        """The inner loop (what time-axis checkpointing recomputes)."""
        return self.inner_model + self.dual_form + self.inner_update

    @property
    def total(self) -> float:
        return self.projections + self.convolutions + self.ttt + self.mlp


class UnplannedModel(ValueError):
    """A model the planner has no terms for."""


def check_plannable(model: TTTModelConfig) -> None:
    """The planner's FLOP and memory terms describe TTT layers: a hybrid's attention layers
    (their FLOPs grow with the context, their KV cache with the window) are not modelled yet."""
    attention = [i for i, kind in enumerate(model.mixers) if kind != "ttt"]
    if attention:
        raise UnplannedModel(f"the planner models TTT layers only; layer_pattern {model.layer_pattern!r} has "
                             f"attention at layers {attention}")


def layer_flops(model: TTTModelConfig) -> LayerFlops:
    check_plannable(model)
    D, F, H, d, b, K = (model.hidden_size, model.intermediate_size, model.num_heads, model.head_dim,
                        model.mini_batch_size, model.conv_kernel)
    convs = 3 * 2 * D * K if model.pre_conv else 0
    if model.layer_type == "linear":
        inner, dual, update = 2 * d * d, 2 * d * d + 4 * b * d, 2 * d * d + 2 * d
    else:
        inner, dual, update = 24 * d * d, 16 * d * d + 20 * b * d, 16 * d * d + 10 * d
    return LayerFlops(2 * D * (3 * D + H) + 2 * D * D, convs, H * inner, H * dual, H * update, 6 * D * F)


def head_flops(model: TTTModelConfig) -> float:
    """The output layer (tied or not): 2 D V per token."""
    return 2 * model.hidden_size * model.vocab_size


def forward_flops(model: TTTModelConfig) -> float:
    """Forward FLOPs per token of the whole model."""
    return model.num_layers * layer_flops(model).total + head_flops(model)


def model_flops(model: TTTModelConfig) -> float:
    """Training FLOPs per token as MFU counts them: forward and backward (twice the forward:
    gradients of both operands), no recomputation."""
    return 3 * forward_flops(model)


def executed_flops(model: TTTModelConfig, layout: Layout) -> tuple[float, float]:
    """Training FLOPs per token the hardware runs, (large GEMMs, inner loop), recomputation
    included: block checkpointing runs every layer's forward again, time-axis checkpointing
    the inner loop's forward."""
    layer = layer_flops(model)
    L = model.num_layers
    gemm = 3 * (L * (layer.total - layer.ttt) + head_flops(model))
    ttt = 3 * L * layer.ttt
    if layout.block_ckpt:
        gemm += L * (layer.total - layer.ttt)
        ttt += L * layer.ttt
    elif layout.time_checkpoint_group:
        ttt += L * layer.ttt
    return gemm, ttt
