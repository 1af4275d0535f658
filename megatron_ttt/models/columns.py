"""What each fused column-parallel projection computes, in order: the layouts the modules
allocate and split, and the parameter table describes (so both sit below the modules)."""

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.fused import FusedColumns


def in_proj_columns(ttt: TTTModelConfig) -> FusedColumns:
    """A TTT mixer's in-projection: q, [k], v, [gate] (the gate and k only where used), lr logits."""
    D, H = ttt.hidden_size, ttt.num_heads
    names = ["q"] + ([] if ttt.share_qk else ["k"]) + ["v"] + (["gate"] if ttt.use_gate else []) + ["lr"]
    return FusedColumns(tuple(names), tuple(H if n == "lr" else D for n in names))


def qkv_columns(ttt: TTTModelConfig) -> FusedColumns:
    """An attention mixer's in-projection: q, then the key/value heads' k and v."""
    kv = ttt.kv_heads * ttt.head_dim
    return FusedColumns(("q", "k", "v"), (ttt.hidden_size, kv, kv))


def mlp_columns(ttt: TTTModelConfig) -> FusedColumns:
    """The SwiGLU MLP's first layer: gate, up."""
    return FusedColumns(("gate", "up"), (ttt.intermediate_size, ttt.intermediate_size))


def lact_columns(ttt: TTTModelConfig) -> FusedColumns:
    """A LaCT mixer's in-projection: q, k, v (shared by its attention and its fast weights), then
    per fast-weight head its three lr logits (LaCT's "(n_h lr_dim)" order), [momentum logit],
    ttt_scale logit."""
    D, H = ttt.hidden_size, ttt.lact_heads
    names = ["q", "k", "v", "lr"] + (["momentum"] if ttt.lact_momentum else []) + ["ttt_scale"]
    sizes = {"q": D, "k": D, "v": D, "lr": 3 * H, "momentum": H, "ttt_scale": H}
    return FusedColumns(tuple(names), tuple(sizes[n] for n in names))
