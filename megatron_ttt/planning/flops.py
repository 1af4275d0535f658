"""Matmul FLOPs per token of the model, exact for every matrix product the code runs.

A product of [m,k] by [k,n] is 2 m k n FLOPs. Elementwise work (norms, activations, the
LayerNorm-L2 gradient, RoPE, the convolutions' few taps aside) is not counted: it is bound by
memory bandwidth, not by the matmul rate. Notation: D width, F SwiGLU width, H heads, Hkv key/value
heads, d head dim, b mini-batch, V vocabulary, K conv kernel, T sequence length, W window. The
inner loop's terms are per token and head (a mini-batch's b x b products cost 2 b^2 d, i.e. 2 b d
per token). LaCT layers (layer_type "lact"): Hf fast-weight heads of width dh and SwiGLU width h,
chunk C. Causal attention counts the scores and weighted values a query has keys for,
4 d per key and head (T / 2 keys on average for full attention, about W for a window): the
useful work, which a GPU's flash kernels do; masked-out scores are not counted.
"""

from dataclasses import dataclass

from megatron_ttt.models.columns import lact_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning.layout import Layout


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one layer, by part."""

    projections: float
    """Fused in-projection (q|v|gate|lr or q|k|v|lr: D -> 3D + H; LaCT: lact_projection_width) and
    out-projection (D -> D)."""
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
    """Attention layers and LaCT's window: q k^T and the weighted sum of v, 4 d H per key attended
    (TTT layers: 0)."""
    fast_weights: float = 0.0
    """LaCT layers: the SwiGLU fast weights of the Hf heads, lact_forward_flops over the sequence
    per token: every query's apply (6 dh h), every stepping chunk's update (12 dh h per token; the
    last chunk only applies) and Muon's Newton-Schulz per step (other layers: 0)."""

    @property
    def ttt(self) -> float:
        """The TTT inner loop: small batched matmuls (b x d), counted at ttt_efficiency."""
        return self.inner_model + self.dual_form + self.inner_update

    @property
    def total(self) -> float:
        return self.projections + self.convolutions + self.ttt + self.fast_weights + self.mlp + self.attention


def mean_keys(seq_len: int, window: int | None) -> float:
    """Keys a query attends to, averaged over the T positions of a sequence: min(i, W) at position i."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def lact_projection_width(model: TTTModelConfig) -> int:
    """Columns of a LaCT layer's fused in-projection (models/columns.lact_columns): q, k, v (3D)
    shared by the window attention and the fast weights, and per fast-weight head three learning
    rates, the momentum coefficient (with lact_momentum) and the output scale."""
    return lact_columns(model).width()


def lact_layer_flops(model: TTTModelConfig, seq_len: int) -> LayerFlops:
    """A LaCT layer: in- and out-projection, the window attention over num_heads heads on the same
    q, k, v, the fast weights of every fast-weight head, the SwiGLU MLP."""
    D, Hf = model.hidden_size, model.lact_heads
    fast = Hf * lact_forward_flops(seq_len, model.lact_chunk_size, model.lact_head_dim, model.lact_hidden,
                                   model.lact_head_dim, model.lact_muon) / seq_len
    return LayerFlops(2 * D * lact_projection_width(model) + 2 * D * D, 0.0, 0.0, 0.0, 0.0,
                      6 * D * model.intermediate_size, 4 * D * mean_keys(seq_len, model.attention_window), fast)


def layer_flops(model: TTTModelConfig, kind: str = "ttt", seq_len: int = 0) -> LayerFlops:
    """A layer of `kind` (TTTModelConfig.mixers); an attention or LaCT layer's count needs the
    sequence length."""
    D, F, H, d, b, K = (model.hidden_size, model.intermediate_size, model.num_heads, model.head_dim,
                        model.mini_batch_size, model.conv_kernel)
    if (kind != "ttt" or model.layer_type == "lact") and seq_len < 1:
        what = "a LaCT" if kind == "ttt" else "an attention"
        raise ValueError(f"{what} layer's FLOPs depend on the sequence length (got {seq_len})")
    if kind == "ttt" and model.layer_type == "lact":
        return lact_layer_flops(model, seq_len)
    if kind != "ttt":
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
    checkpointing the inner loop's or the fast weights' forward. LaCT's fast weights count as large
    GEMMs: chunk x dh x h products (2048 x 384 x 384 at 760m), the point of its large chunks."""
    per_layer = layers(model, layout.seq_len)
    forward_gemm = sum(layer.total - layer.ttt for layer in per_layer)
    forward_ttt = sum(layer.ttt for layer in per_layer)
    gemm, ttt = 3 * (forward_gemm + head_flops(model)), 3 * forward_ttt
    if layout.block_ckpt:
        gemm += forward_gemm
        ttt += forward_ttt
    elif layout.time_checkpoint_group:
        gemm += model.mixers.count("ttt") * lact_recomputed_flops(model, layout.seq_len)
        ttt += forward_ttt
    return gemm, ttt


def lact_recomputed_flops(model: TTTModelConfig, seq_len: int) -> float:
    """What time-axis checkpointing runs again of a LaCT layer's fast weights, per token: their
    forward but the last chunk's w1 product (its output is saved nowhere, and torch's checkpoint
    stops recomputing after the last saved tensor it needs); 0 for other layers."""
    if model.layer_type != "lact":
        return 0.0
    C, h, d = model.lact_chunk_size, model.lact_hidden, model.lact_head_dim
    last_chunk = seq_len - (-(-seq_len // C) - 1) * C
    skipped = model.lact_heads * last_chunk * 2 * h * d / seq_len
    return layer_flops(model, "ttt", seq_len).fast_weights - skipped


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
