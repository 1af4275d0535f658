"""Activation bytes one rank keeps between a micro-batch's forward and its backward.

Every term is the storage autograd saves for the backward in our code (checked against
saved-tensor hooks on the real modules; docs/planning.md lists them op by op), per token of the
micro-batch. e is the activation dtype's size (2 bf16, 4 fp32); statistics are fp32 (4 bytes).
Under sequence parallelism (factor s = tp) the tokens outside the mixer and the MLP are split
over the TP ranks; inside them the width is split (D/tp, F/tp, H/tp) and the sequence is whole.
Under context parallelism a rank holds 1/cp of each sample's tokens (Layout.micro_tokens) outside
the mixers and whole sequences of 1/cp of its heads inside: per token the same bytes either way.
A LaCT layer's fast weights run in fp32 (4 bytes) whatever e; lact_activations.py counts the op.
"""

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning import lact_activations as lact
from megatron_ttt.planning.flops import lact_projection_width
from megatron_ttt.planning.layout import Layout


def inner_parameters(model: TTTModelConfig) -> int:
    """Elements of one head's inner model: d*d + d (Linear), d*4d + 4d + 4d*d + d (MLP)."""
    w = model.inner_widths
    return sum(a * c + c for a, c in zip(w[:-1], w[1:]))


def outside_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """Norms and residual-stream tensors of a layer, per token: each RMSNorm keeps its fp32
    input and its normed output ((4 + e) D), the in-projection and fc1 keep their inputs (e D
    each, the local sequence shard under SP); the pre-conv keeps its (gathered) input (e D)."""
    D, e, sp = model.hidden_size, layout.act_bytes, layout.parallel.sequence_parallel_split
    norms = 3 if model.pre_conv else 2
    return (norms * (4 + e) * D + 2 * e * D) / sp + (e * D if model.pre_conv else 0)


def mixer_fixed_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """What a mixer keeps whatever the time-axis checkpointing, per token: the fused projection
    (q|v|gate|lr or q|k|v|lr: 3D + H), the mini-batched copies of q, k and v - k (3D), the inner
    lr and its sigmoid (2H), eta, q k^T + 1 and the first layer's dual-form matrix (3 H b), and
    the post-norm (fp32 centred input 4D, normed, scaled, and with the gate: gate activation and
    gated product: e D each)."""
    if model.layer_type == "lact":
        return lact_fixed_bytes(model, layout)
    D, H, b, e = model.hidden_size, model.num_heads, model.mini_batch_size, layout.act_bytes
    post = 4 * D + e * D * (4 if model.use_gate else 2)
    return (e * (3 * D + H) + 3 * e * D + 2 * e * H + 3 * e * H * b + post) / layout.tp


def inner_loop_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """The inner loop without time-axis checkpointing, per token: every mini-batch keeps its
    inner-model intermediates (Linear: the LayerNorm-L2 gradient's five tensors, the gradient and
    the lr-weighted keys, 7D; MLP: 63D and two b x b matrices per head), the output LayerNorm's two
    tensors (2D), and two inner states per mini-batch (the new weights and the gradient step:
    2 H P_inner / b per token). LaCT: the op's saved tensors over the sequence."""
    if model.layer_type == "lact":
        return lact_op_bytes(model, layout, lact.sequence_saved(layout.seq_len, model.lact_chunk_size,
                                                                 *lact.fast_shape(model), model.lact_momentum,
                                                                 model.lact_muon))
    D, H, b, e = model.hidden_size, model.num_heads, model.mini_batch_size, layout.act_bytes
    intermediates = 7 * D if model.layer_type == "linear" else 63 * D + 2 * H * b
    return e * (intermediates + 2 * D + 2 * H * inner_parameters(model) / b) / layout.tp


def inner_loop_checkpointed_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """With time-axis checkpointing (G mini-batches a group), per token: only the inner state at
    every group's start (H P_inner / (b G)); the group's intermediates are recomputed. LaCT: the
    fast weights (and velocity) at every group's start, G chunks a group."""
    if model.layer_type == "lact":
        return lact_op_bytes(model, layout, lact.checkpointed_saved(
            layout.seq_len, model.lact_chunk_size, layout.time_checkpoint_group, *lact.fast_shape(model),
            model.lact_momentum))
    H, b, e = model.num_heads, model.mini_batch_size, layout.act_bytes
    return e * H * inner_parameters(model) / (b * layout.time_checkpoint_group) / layout.tp


def lact_fixed_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """What a LaCT mixer keeps besides the op's intermediates, per token: the fused in-projection
    (q|k|v|lrs|momentum|scale), the window attention's tensors (as an attention layer's), the fast
    weights' inputs (silu of q, k, v and the L2-normed q, k: 5 e D; rotated and in fp32 with the
    softplus lrs and the momentum: 4 (3D + (3 + m) Hf)), the op's fp32 output, which the per-head
    RMSNorm keeps (4D), its normed output and the scaled one (2 e D) and the scale's silu (2 e Hf)."""
    D, Hf, e = model.hidden_size, model.lact_heads, layout.act_bytes
    fast_inputs = 5 * e * D + 4 * (3 * D + (4 if model.lact_momentum else 3) * Hf)
    output = 4 * D + 2 * e * D + 2 * e * Hf
    return e * lact_projection_width(model) / layout.tp + attention_bytes(model, layout) + (
        fast_inputs + output) / layout.tp


def lact_op_bytes(model: TTTModelConfig, layout: Layout, elements_per_sequence: float) -> float:
    """Bytes per token of the op's `elements_per_sequence` per fast-weight head (fp32), a TP rank's heads."""
    return 4 * model.lact_heads * elements_per_sequence / layout.seq_len / layout.tp


def fast_weight_state_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """One LaCT layer's fast-weight state on a rank, [B * Hf / (tp cp), h, Dh] fp32 for w0 and w2
    and [.., Dh, h] for w1 (twice with momentum's velocity): the micro-batch's whole sequences of
    its heads inside the mixer."""
    heads = layout.micro_batch * model.lact_heads // (layout.tp * layout.cp)
    din, h, dout = lact.fast_shape(model)
    return 4 * heads * h * (2 * din + dout) * (2 if model.lact_momentum else 1)


def mlp_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """SwiGLU, per token: fc1's output (gate|up, 2F), silu(gate) (F) and the product fc2 reads (F)."""
    return 4 * model.intermediate_size * layout.act_bytes / layout.tp


def ttt_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """The TTT inner loop's share per token and layer, as configured (time-axis checkpointing or not)."""
    if layout.time_checkpoint_group:
        return inner_loop_checkpointed_bytes(model, layout)
    return inner_loop_bytes(model, layout)


def attention_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """What an attention mixer keeps, per token: the rotated q and k and v (D + 2 Hkv d), the
    attention output and its flattened copy, the out-projection's input (2D), and the fp32
    log-sum-exp per head (4H)."""
    D, H, e = model.hidden_size, model.num_heads, layout.act_bytes
    return (e * (3 * D + 2 * model.kv_heads * model.head_dim) + 4 * H) / layout.tp


def layer_bytes(model: TTTModelConfig, layout: Layout, kind: str = "ttt") -> float:
    """Everything one layer of `kind` (TTTModelConfig.mixers) keeps per token, no block checkpointing."""
    mixer = (mixer_fixed_bytes(model, layout) + ttt_bytes(model, layout) if kind == "ttt"
             else attention_bytes(model, layout))
    return outside_bytes(model, layout) + mixer + mlp_bytes(model, layout)


def head_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """Kept by the final norm, the head and the loss, per token: norm ((4 + e) D) and head input
    (e D), and the fp32 logits that megatron-core's vocabulary-parallel cross entropy shifts and
    exponentiates in place into the softmax it keeps (4 V / tp)."""
    D, e = model.hidden_size, layout.act_bytes
    return ((4 + 2 * e) * D) / layout.parallel.sequence_parallel_split + 4 * model.vocab_size / layout.tp


def head_transient_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """Live for a moment at the loss, per token: under bf16 the head's bf16 logits (2 V / tp) beside
    their fp32 copy; under fp32 the loss works in the logits themselves (nothing more)."""
    return (2 if layout.act_bytes == 2 else 0) * model.vocab_size / layout.tp


def recompute_transient_bytes(model: TTTModelConfig, layout: Layout) -> float:
    """The largest recomputation alive in the backward, per micro-batch (bytes): one block's
    activations under block checkpointing, else one time-axis group of one layer's inner loop."""
    tokens = layout.micro_tokens
    if layout.block_ckpt:
        return tokens * max(layer_bytes(model, layout, kind) for kind in set(model.mixers))
    if layout.time_checkpoint_group and "ttt" in model.mixers and model.layer_type == "lact":
        group = lact.group_saved(layout.seq_len, model.lact_chunk_size, layout.time_checkpoint_group,
                                 *lact.fast_shape(model), model.lact_momentum, model.lact_muon)
        return layout.micro_batch * lact_op_bytes(model, layout, group) * layout.seq_len / layout.cp
    if layout.time_checkpoint_group and "ttt" in model.mixers:
        group_tokens = min(layout.time_checkpoint_group * model.mini_batch_size, layout.seq_len) * layout.micro_batch
        return group_tokens * inner_loop_bytes(model, layout) / layout.cp  # a group of 1/cp of the heads
    return 0.0


def stored_bytes(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Activation bytes alive at the end of one micro-batch's forward, by part."""
    tokens, L = layout.micro_tokens, model.num_layers
    if layout.block_ckpt:
        # Only each block's input is kept; its inner loop's share is recomputed with it.
        blocks = L * tokens * layout.act_bytes * model.hidden_size / layout.parallel.sequence_parallel_split
        ttt = 0.0
    else:
        ttt = model.mixers.count("ttt") * tokens * ttt_bytes(model, layout)
        blocks = tokens * sum(layer_bytes(model, layout, kind) for kind in model.mixers) - ttt
    return {"ttt": ttt, "blocks": blocks, "head": tokens * head_bytes(model, layout)}
