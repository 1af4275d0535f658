"""Matmul FLOPs per token of the model, exact for every matrix product the code runs.

A product of [m,k] by [k,n] is 2 m k n FLOPs. Elementwise work (norms, activations, the
LayerNorm-L2 gradient, RoPE, the convolutions' few taps aside) is not counted: it is bound by
memory bandwidth, not by the matmul rate. Notation: D width, F SwiGLU width, H heads, Hkv key/value
heads, d head dim, b mini-batch, V vocabulary, K conv kernel, T sequence length, W window. The
inner loop's terms are per token and head (a mini-batch's b x b products cost 2 b^2 d, i.e. 2 b d
per token). Causal attention counts the scores and weighted values a query has keys for,
4 d per key and head (T / 2 keys on average for full attention, about W for a window): the
useful work, which a GPU's flash kernels do; masked-out scores are not counted.
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
    attention: float = 0.0
    """Attention layers: q k^T and the weighted sum of v, 4 d H per key attended (TTT layers: 0)."""

    @property
    def ttt(self) -> float:
        """The inner loop (what time-axis checkpointing recomputes)."""
        return self.inner_model + self.dual_form + self.inner_update

    @property
    def total(self) -> float:
        return self.projections + self.convolutions + self.ttt + self.mlp + self.attention


def mean_keys(seq_len: int, window: int | None) -> float:
    """Keys a query attends to, averaged over the T positions of a sequence: min(i, W) at position i."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def layer_flops(model: TTTModelConfig, kind: str = "ttt", seq_len: int = 0) -> LayerFlops:
    """A layer of `kind` (TTTModelConfig.mixers); an attention layer's count needs the sequence length."""
    D, F, H, d, b, K = (model.hidden_size, model.intermediate_size, model.num_heads, model.head_dim,
                        model.mini_batch_size, model.conv_kernel)
    if kind != "ttt":
        if seq_len < 1:
            raise ValueError(f"an attention layer's FLOPs depend on the sequence length (got {seq_len})")
        window = model.attention_window if kind == "window" else None
        projections = 2 * D * (D + 2 * model.kv_heads * d) + 2 * D * D
        convs = 2 * D * K if model.pre_conv else 0
        return LayerFlops(projections, convs, 0.0, 0.0, 0.0, 6 * D * F, 4 * d * H * mean_keys(seq_len, window))
    convs = 3 * 2 * D * K if model.pre_conv else 0
    if model.layer_type == "linear":
        inner, dual, update = 2 * d * d, 2 * d * d + 4 * b * d, 2 * d * d + 2 * d
    else:
        inner, dual, update = 24 * d * d, 16 * d * d + 20 * b * d, 16 * d * d + 10 * d
    return LayerFlops(2 * D * (3 * D + H) + 2 * D * D, convs, H * inner, H * dual, H * update, 6 * D * F)


def layers(model: TTTModelConfig, seq_len: int = 0) -> list[LayerFlops]:
    """Every layer's FLOPs, in order."""
    by_kind = {kind: layer_flops(model, kind, seq_len) for kind in set(model.mixers)}
    return [by_kind[kind] for kind in model.mixers]


def head_flops(model: TTTModelConfig) -> float:
    """The output layer (tied or not): 2 D V per token."""
    return 2 * model.hidden_size * model.vocab_size


def forward_flops(model: TTTModelConfig, seq_len: int = 0) -> float:
    """Forward FLOPs per token of the whole model (at `seq_len` tokens per sequence: hybrids)."""
    return sum(layer.total for layer in layers(model, seq_len)) + head_flops(model)


def model_flops(model: TTTModelConfig, seq_len: int = 0) -> float:
    """Training FLOPs per token as MFU counts them: forward and backward (twice the forward:
    gradients of both operands), no recomputation."""
    return 3 * forward_flops(model, seq_len)


def executed_flops(model: TTTModelConfig, layout: Layout) -> tuple[float, float]:
    """Training FLOPs per token the hardware runs, (large GEMMs and attention, inner loop),
    recomputation included: block checkpointing runs every layer's forward again, time-axis
    checkpointing the inner loop's forward."""
    per_layer = layers(model, layout.seq_len)
    forward_gemm = sum(layer.total - layer.ttt for layer in per_layer)
    forward_ttt = sum(layer.ttt for layer in per_layer)
    gemm, ttt = 3 * (forward_gemm + head_flops(model)), 3 * forward_ttt
    if layout.block_ckpt:
        gemm += forward_gemm
        ttt += forward_ttt
    elif layout.time_checkpoint_group:
        ttt += forward_ttt
    return gemm, ttt


def newton_schulz5_flops(rows: int, cols: int) -> float:
    """Muon's Newton-Schulz 5 on one [rows,cols] step, on its wide orientation m <= n: five times
    A = X X^T (2 m^2 n), A A (2 m^3) and (b A + c A^2) X (2 m^2 n)."""
    m, n = min(rows, cols), max(rows, cols)
    return 5 * (4 * m * m * n + 2 * m**3)


def lact_forward_flops(seq_len: int, chunk: int, d_in: int, d_hidden: int, d_out: int, use_muon: bool) -> float:
    """Forward FLOPs of LaCT's SwiGLU fast weights (ops/lact.py) for one fast-weight head over a
    sequence of seq_len tokens. Every token's query applies f: w0 q, w2 q, w1 (.) = 2 H (2 Din + Dout);
    every token of the ceil(T / C) - 1 chunks that step (all but the last) runs the keys' forward
    (2 x 2 Din H), w1^T v (2 Dout H) and the three steps' outer products (2 Dout H + 2 x 2 Din H): with
    Din = Dout = D that is LaCT's 6 D H + 12 D H = 18 D H per token; Muon adds Newton-Schulz on the
    three steps of every stepping chunk."""
    steps = -(-seq_len // chunk) - 1
    apply = seq_len * 2 * d_hidden * (2 * d_in + d_out)
    update = steps * chunk * (8 * d_in * d_hidden + 4 * d_out * d_hidden)
    muon = steps * (2 * newton_schulz5_flops(d_hidden, d_in) + newton_schulz5_flops(d_out, d_hidden)) if use_muon else 0
    return apply + update + muon
