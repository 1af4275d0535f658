"""The parameter table: every parameter of the model, one rule each, and the only description
of them: its reference-format (`TTTForCausalLM`) name(s) and shape(s), how it is split over TP
ranks, how it is initialized and whether it is weight-decayed.

LaCT layers (layer_type lact) are named as LaCT's checkpoints name them (`attn.*`, its
lact_llm/lact_model/layer_lact_swiglu.py), with its fused qkv.weight ([q; k; v]) as its three
components; the reference format refuses them as it refuses hybrids. Their fast weights' initial
values (w0, w1, w2 or their low-rank factors) are, like the TTT inner weights, weight-decayed and
not hidden matrices (Muon leaves them to AdamW); the in- and out-projections are hidden matrices;
qk_scale, qk_offset, the norm's gain and the biases are not decayed.

The attention layers of a hybrid model have no counterpart in the reference (it has only TTT
layers); their rules name them as Llama's `self_attn.{q,k,v,o}_proj`, which keeps conversion
between our own layouts uniform, and writing the reference format refuses a hybrid.

Each of our parameters is built from one reference tensor (split over TP ranks along a dim, or
replicated) or, for the fused projections, from several (each split, then concatenated). The
modules only allocate their parameters; the rules drive initialization (models/build.py), the
optimizer's weight-decay groups (training/), conversion (models/parameters.py) and the
parameter count (models/presets.py). Plain Python, so presets and the planner load without torch.
"""

from dataclasses import dataclass
from math import prod

from megatron_ttt.models.columns import in_proj_columns, lact_columns, mlp_columns, qkv_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.fused import FusedColumns

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    ours: str
    refs: tuple[str, ...]
    """One reference name, or one per fused component."""
    shapes: tuple[Shape, ...]
    """The reference tensors' shapes, one per name in `refs`."""
    split_dim: int | None = 0
    """Dim of our (full) tensor split over TP ranks (a fused one's: 0, each component's rows);
    None: replicated."""
    squeeze_dim: int | None = None
    """The reference stores this tensor with an extra singleton dim here."""
    fused: FusedColumns | None = None
    init: str = "normal"
    """How the reference initializes it (each component of a fused one): one of INITS."""
    std: float | None = None
    """init "normal": its standard deviation (None: the model's init_std)."""
    weight_decay: bool = True
    """AdamW's decoupled weight decay applies (matrices, embeddings, inner and conv weights)."""
    hidden_matrix: bool = False
    """A hidden layer's weight matrix (the mixers' and the MLP's projections): what Muon
    orthogonalises; embeddings, the head, the TTT inner model's per-head initial weights, convs,
    norms and biases are not."""

    def local_shape(self, tp_size: int) -> Shape:
        """Our tensor's shape on each of `tp_size` TP ranks: the reference shape (less its
        squeezed dim) split along split_dim, or the fused width by the components' input width."""
        if self.fused is not None:
            return self.fused.width(tp_size), prod(self.shapes[0][1:])
        shape = [n for dim, n in enumerate(self.shapes[0]) if dim != self.squeeze_dim]
        if self.split_dim is not None:
            shape[self.split_dim] //= tp_size
        return tuple(shape)


INITS = ("normal", "conv", "ones", "zeros")
"""normal(0, init_std); torch's Conv1d default, uniform(+-1/sqrt(kernel)); ones; zeros."""


def _one(ours: str, ref: str, shape: Shape, **how) -> Rule:
    """A parameter from one reference tensor."""
    return Rule(ours, (ref,), (shape,), **how)


def _fused(ours: str, refs: dict[str, str], shapes: dict[str, Shape], columns: FusedColumns) -> Rule:
    """A fused projection: one reference tensor per component of `columns`, by component name."""
    return Rule(ours, tuple(refs[n] for n in columns.names), tuple(shapes[n] for n in columns.names), fused=columns,
                hidden_matrix=True)


def _gain(ours: str, ref: str, shape: Shape, split_dim: int | None = 0) -> Rule:
    """A norm's gain: ones, not decayed."""
    return _one(ours, ref, shape, split_dim=split_dim, init="ones", weight_decay=False)


def _bias(ours: str, ref: str, shape: Shape, split_dim: int | None = 0, squeeze_dim: int | None = None) -> Rule:
    """A bias (or the token offsets): zeros, not decayed."""
    return _one(ours, ref, shape, split_dim=split_dim, squeeze_dim=squeeze_dim, init="zeros", weight_decay=False)


def _ttt_mixer_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    D, H, d, K = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.conv_kernel
    m, s = f"{o}mixer.", f"{r}seq_modeling_block."
    columns = in_proj_columns(cfg)
    refs = {"q": "q_proj.weight", "k": "k_proj.weight", "v": "v_proj.weight", "gate": "g_proj.weight",
            "lr": "learnable_ttt_lr_weight"}
    shapes = {n: (H, 1, D) if n == "lr" else (size, D) for n, size in zip(columns.names, columns.sizes)}
    out = [_fused(f"{m}in_proj.weight", {n: s + ref for n, ref in refs.items()}, shapes, columns),
           _one(f"{m}out_proj.weight", f"{s}o_proj.weight", (D, D), split_dim=1, hidden_matrix=True),
           _gain(f"{m}ttt_norm_weight", f"{s}ttt_norm_weight", (H, d)),
           _bias(f"{m}ttt_norm_bias", f"{s}ttt_norm_bias", (H, d)),
           _bias(f"{m}ttt_lr_bias", f"{s}learnable_ttt_lr_bias", (H, 1), squeeze_dim=1),
           _bias(f"{m}token_offset", f"{s}learnable_token_idx", (cfg.mini_batch_size,), split_dim=None),
           _gain(f"{m}post_norm_weight", f"{s}post_norm.weight", (D,)),
           _bias(f"{m}post_norm_bias", f"{s}post_norm.bias", (D,))]
    widths = cfg.inner_widths
    for j, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:]), 1):
        out += [_one(f"{m}W{j}", f"{s}W{j}", (H, w_in, w_out)),
                _bias(f"{m}b{j}", f"{s}b{j}", (H, 1, w_out), squeeze_dim=1)]
    if cfg.share_qk:
        out += [_one(f"{m}conv_{x}_{p}", f"{s}conv_{x}.{p}", (D, 1, K) if p == "weight" else (D,), init="conv",
                     weight_decay=p == "weight") for x in "qk" for p in ("weight", "bias")]
    return out


def _lact_mixer_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    """LaCT's layer, initialized as its _init_weights: linears normal(init_std) with zero biases,
    the fast weights' factors normal(gain / sqrt(rank)) (left) and normal(gain / sqrt(d_in))
    (right), full-rank w0, w2 normal(1 / sqrt(d_in)), w1 normal(1 / sqrt(d_h))."""
    D, H, d_in, d_h, rank, gain = (cfg.hidden_size, cfg.lact_heads, cfg.lact_head_dim, cfg.lact_hidden,
                                   cfg.lact_fw_rank, cfg.lact_fw_init_gain)
    m, s = f"{o}mixer.", f"{r}attn."
    columns = lact_columns(cfg)
    refs = {"q": "q_proj.weight", "k": "k_proj.weight", "v": "v_proj.weight", "lr": "lr_proj.weight",
            "momentum": "momentum_proj.0.weight", "ttt_scale": "ttt_scale_proj.weight"}
    shapes = {n: (size, D) for n, size in zip(columns.names, columns.sizes)}
    out = [_fused(f"{m}in_proj.weight", {n: s + ref for n, ref in refs.items()}, shapes, columns),
           _one(f"{m}out_proj.weight", f"{s}o_proj.weight", (D, D), split_dim=1, hidden_matrix=True),
           _bias(f"{m}lr_bias", f"{s}lr_proj.bias", (3 * H,)),
           _bias(f"{m}ttt_scale_bias", f"{s}ttt_scale_proj.bias", (H,)),
           _one(f"{m}qk_scale", f"{s}qk_scale", (D, 2), init="ones", weight_decay=False),
           _bias(f"{m}qk_offset", f"{s}qk_offset", (D, 2)),
           _gain(f"{m}ttt_norm_weight", f"{s}ttt_norm.weight", (d_in,), None)]
    if cfg.lact_momentum:
        out.append(_bias(f"{m}momentum_bias", f"{s}momentum_proj.0.bias", (H,)))
    for name in ("w0", "w2"):
        if rank:
            out += [_one(f"{m}{name}_left", f"{s}{name}.w_left", (H, d_h, rank), std=gain / rank ** 0.5),
                    _one(f"{m}{name}_right", f"{s}{name}.w_right", (H, rank, d_in), std=gain / d_in ** 0.5)]
        else:
            out.append(_one(f"{m}{name}", f"{s}{name}", (H, d_h, d_in), std=1 / d_in ** 0.5))
    return out + [_one(f"{m}w1", f"{s}w1", (H, d_in, d_h), std=1 / d_h ** 0.5)]


def _attention_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    D, kv = cfg.hidden_size, cfg.kv_heads * cfg.head_dim
    m, s = f"{o}mixer.", f"{r}self_attn."
    refs = {n: f"{s}{n}_proj.weight" for n in "qkv"}
    return [_fused(f"{m}in_proj.weight", refs, {"q": (D, D), "k": (kv, D), "v": (kv, D)}, qkv_columns(cfg)),
            _one(f"{m}out_proj.weight", f"{s}o_proj.weight", (D, D), split_dim=1, hidden_matrix=True)]


def _block_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    """What every layer has besides its mixer: the pre-conv (Mamba backbone), norms, the MLP."""
    D, F, K = cfg.hidden_size, cfg.intermediate_size, cfg.conv_kernel
    out = []
    if cfg.pre_conv:
        out += [_one(f"{o}pre_conv.weight", f"{r}conv.conv.weight", (D, 1, K), split_dim=None, init="conv"),
                _one(f"{o}pre_conv.bias", f"{r}conv.conv.bias", (D,), split_dim=None, init="conv", weight_decay=False),
                _gain(f"{o}pre_conv.norm.weight", f"{r}conv.norm.weight", (D,), None)]
    mlp = {"gate": f"{r}mlp.gate_proj.weight", "up": f"{r}mlp.up_proj.weight"}
    return out + [_gain(f"{o}seq_norm.weight", f"{r}seq_norm.weight", (D,), None),
                  _gain(f"{o}ffn_norm.weight", f"{r}ffn_norm.weight", (D,), None),
                  _fused(f"{o}mlp.fc1.weight", mlp, {"gate": (F, D), "up": (F, D)}, mlp_columns(cfg)),
                  _one(f"{o}mlp.fc2.weight", f"{r}mlp.down_proj.weight", (D, F), split_dim=1, hidden_matrix=True)]


def rules(cfg: TTTModelConfig) -> list[Rule]:
    """The model's parameters, in order: embedding, final norm, [untied head], then each layer's."""
    V, D = cfg.vocab_size, cfg.hidden_size
    out = [_one("embedding.weight", "model.embed_tokens.weight", (V, D)),
           _gain("final_norm.weight", "model.norm.weight", (D,), None)]
    if not cfg.tie_word_embeddings:
        out.append(_one("output_layer.weight", "lm_head.weight", (V, D)))
    for i, kind in enumerate(cfg.mixers):
        o, r = f"blocks.{i}.", f"model.layers.{i}."
        if kind != "ttt":
            out += _attention_rules(cfg, o, r)
        else:
            out += _lact_mixer_rules(cfg, o, r) if cfg.layer_type == "lact" else _ttt_mixer_rules(cfg, o, r)
        out += _block_rules(cfg, o, r)
    return out


def reference_shapes(cfg: TTTModelConfig) -> dict[str, Shape]:
    """Every reference tensor's name and shape for this config (the rules', in their order)."""
    return {ref: shape for rule in rules(cfg) for ref, shape in zip(rule.refs, rule.shapes)}
