"""Every parameter of the model, one rule each: its reference-format (`TTTForCausalLM`) name,
how it is split over TP ranks, how it is initialized and whether it is weight-decayed.

The attention layers of a hybrid model have no counterpart in the reference (it has only TTT
layers); their rules name them as Llama's `self_attn.{q,k,v,o}_proj`, which keeps conversion
between our own layouts uniform, and writing the reference format refuses a hybrid.

Each of our parameters is built from one reference tensor (split over TP ranks along a dim, or
replicated) or, for the fused projections, from several (each split, then concatenated). The
rules drive initialization (models/build.py), the optimizer's weight-decay groups (training/) and
conversion: `to_local` and `to_full` apply them in the two directions and check every name and
shape on the way.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.attention import qkv_columns
from megatron_ttt.models.block import mlp_columns
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.fused import FusedColumns
from megatron_ttt.models.mixer import in_proj_columns


class ReferenceFormatError(UserInputError):
    """Reference-format tensors that do not fit the model: the message lists every offending name."""


@dataclass(frozen=True)
class Rule:
    ours: str
    refs: tuple[str, ...]
    """One reference name, or one per fused component."""
    split_dim: int | None = 0
    """Dim of our (full) tensor split over TP ranks; None: replicated."""
    squeeze_dim: int | None = None
    """The reference stores this tensor with an extra singleton dim here."""
    fused: FusedColumns | None = None
    init: str = "normal"
    """How the reference initializes it (each component of a fused one): one of INITS."""
    weight_decay: bool = True
    """AdamW's decoupled weight decay applies (matrices, embeddings, inner and conv weights)."""


INITS = ("normal", "conv", "ones", "zeros")
"""normal(0, init_std); torch's Conv1d default, uniform(+-1/sqrt(kernel)); ones; zeros."""


def _gain(ours: str, ref: str, split_dim: int | None = 0) -> Rule:
    """A norm's gain: ones, not decayed."""
    return Rule(ours, (ref,), split_dim=split_dim, init="ones", weight_decay=False)


def _bias(ours: str, ref: str, split_dim: int | None = 0, squeeze_dim: int | None = None) -> Rule:
    """A bias (or the token offsets): zeros, not decayed."""
    return Rule(ours, (ref,), split_dim=split_dim, squeeze_dim=squeeze_dim, init="zeros", weight_decay=False)


def _ttt_mixer_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    component_refs = {"q": "q_proj.weight", "k": "k_proj.weight", "v": "v_proj.weight", "gate": "g_proj.weight",
                      "lr": "learnable_ttt_lr_weight"}
    columns = in_proj_columns(cfg)
    m, s = f"{o}mixer.", f"{r}seq_modeling_block."
    out = [Rule(f"{m}in_proj.weight", tuple(s + component_refs[n] for n in columns.names), fused=columns),
           Rule(f"{m}out_proj.weight", (f"{s}o_proj.weight",), split_dim=1),
           _gain(f"{m}ttt_norm_weight", f"{s}ttt_norm_weight"),
           _bias(f"{m}ttt_norm_bias", f"{s}ttt_norm_bias"),
           _bias(f"{m}ttt_lr_bias", f"{s}learnable_ttt_lr_bias", squeeze_dim=1),
           _bias(f"{m}token_offset", f"{s}learnable_token_idx", split_dim=None),
           _gain(f"{m}post_norm_weight", f"{s}post_norm.weight"),
           _bias(f"{m}post_norm_bias", f"{s}post_norm.bias")]
    for j in range(1, len(cfg.inner_widths)):
        out += [Rule(f"{m}W{j}", (f"{s}W{j}",)), _bias(f"{m}b{j}", f"{s}b{j}", squeeze_dim=1)]
    if cfg.share_qk:
        out += [Rule(f"{m}conv_{x}_{p}", (f"{s}conv_{x}.{p}",), init="conv", weight_decay=p == "weight")
                for x in "qk" for p in ("weight", "bias")]
    return out


def _attention_rules(cfg: TTTModelConfig, o: str, r: str) -> list[Rule]:
    m, s = f"{o}mixer.", f"{r}self_attn."
    return [Rule(f"{m}in_proj.weight", tuple(f"{s}{n}_proj.weight" for n in "qkv"), fused=qkv_columns(cfg)),
            Rule(f"{m}out_proj.weight", (f"{s}o_proj.weight",), split_dim=1)]


def rules(cfg: TTTModelConfig) -> list[Rule]:
    out = [Rule("embedding.weight", ("model.embed_tokens.weight",)),
           _gain("final_norm.weight", "model.norm.weight", None)]
    if not cfg.tie_word_embeddings:
        out.append(Rule("output_layer.weight", ("lm_head.weight",)))
    for i, kind in enumerate(cfg.mixers):
        o, r = f"blocks.{i}.", f"model.layers.{i}."
        out += _ttt_mixer_rules(cfg, o, r) if kind == "ttt" else _attention_rules(cfg, o, r)
        if cfg.pre_conv:
            out += [Rule(f"{o}pre_conv.weight", (f"{r}conv.conv.weight",), split_dim=None, init="conv"),
                    Rule(f"{o}pre_conv.bias", (f"{r}conv.conv.bias",), split_dim=None, init="conv", weight_decay=False),
                    _gain(f"{o}pre_conv.norm.weight", f"{r}conv.norm.weight", None)]
        out += [_gain(f"{o}seq_norm.weight", f"{r}seq_norm.weight", None),
                _gain(f"{o}ffn_norm.weight", f"{r}ffn_norm.weight", None),
                Rule(f"{o}mlp.fc1.weight", (f"{r}mlp.gate_proj.weight", f"{r}mlp.up_proj.weight"), fused=mlp_columns(cfg)),
                Rule(f"{o}mlp.fc2.weight", (f"{r}mlp.down_proj.weight",), split_dim=1)]
    return out


def reference_shapes(cfg: TTTModelConfig) -> dict[str, tuple[int, ...]]:
    """Every reference tensor's name and shape for this config."""
    D, H, d, V, F, K, b = (cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.vocab_size, cfg.intermediate_size,
                           cfg.conv_kernel, cfg.mini_batch_size)
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    widths = cfg.inner_widths
    for i, kind in enumerate(cfg.mixers):
        r = f"model.layers.{i}."
        if kind != "ttt":
            a, kv = f"{r}self_attn.", (cfg.kv_heads * d, D)
            shapes |= {f"{a}q_proj.weight": (D, D), f"{a}k_proj.weight": kv, f"{a}v_proj.weight": kv,
                       f"{a}o_proj.weight": (D, D)}
        else:
            s = f"{r}seq_modeling_block."
            projections = ["q"] + ([] if cfg.share_qk else ["k"]) + ["v", "o"] + (["g"] if cfg.use_gate else [])
            shapes |= {f"{s}{p}_proj.weight": (D, D) for p in projections}
            shapes |= {f"{s}learnable_ttt_lr_weight": (H, 1, D), f"{s}learnable_ttt_lr_bias": (H, 1),
                       f"{s}learnable_token_idx": (b,), f"{s}ttt_norm_weight": (H, d), f"{s}ttt_norm_bias": (H, d),
                       f"{s}post_norm.weight": (D,), f"{s}post_norm.bias": (D,)}
            for j in range(1, len(widths)):
                shapes |= {f"{s}W{j}": (H, widths[j - 1], widths[j]), f"{s}b{j}": (H, 1, widths[j])}
            if cfg.share_qk:
                shapes |= {f"{s}conv_{x}.weight": (D, 1, K) for x in "qk"} | {f"{s}conv_{x}.bias": (D,) for x in "qk"}
        if cfg.pre_conv:
            shapes |= {f"{r}conv.conv.weight": (D, 1, K), f"{r}conv.conv.bias": (D,), f"{r}conv.norm.weight": (D,)}
        shapes |= {f"{r}seq_norm.weight": (D,), f"{r}ffn_norm.weight": (D,), f"{r}mlp.gate_proj.weight": (F, D),
                   f"{r}mlp.up_proj.weight": (F, D), f"{r}mlp.down_proj.weight": (D, F)}
    return shapes


def check_reference(full: dict[str, torch.Tensor], cfg: TTTModelConfig, source: str) -> None:
    """Raise ReferenceFormatError listing missing, unexpected and misshapen tensors."""
    expected = reference_shapes(cfg)
    # With tied embeddings the reference usually saves no lm_head; a copy of the embedding is ignored.
    allowed = set(expected) | ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    extra = sorted(set(full) - allowed)
    missing = sorted(set(expected) - set(full))
    wrong = sorted(f"{n} {tuple(full[n].shape)} (expected {expected[n]})"
                   for n in set(expected) & set(full) if tuple(full[n].shape) != expected[n])
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if names]
    if problems:
        raise ReferenceFormatError(f"{source} does not match the model config: " + "; ".join(problems))


def _from_ref(t: torch.Tensor, rule: Rule) -> torch.Tensor:
    return t.squeeze(rule.squeeze_dim) if rule.squeeze_dim is not None else t


def _to_ref(t: torch.Tensor, rule: Rule) -> torch.Tensor:
    return t.unsqueeze(rule.squeeze_dim) if rule.squeeze_dim is not None else t


def to_local(full: dict[str, torch.Tensor], cfg: TTTModelConfig, tp_rank: int = 0, tp_size: int = 1,
             source: str = "reference weights") -> dict[str, torch.Tensor]:
    """Reference-format tensors -> our parameters on TP rank `tp_rank` of `tp_size`."""
    check_reference(full, cfg, source)
    return {rule.ours: local_tensor(rule, full.__getitem__, tp_rank, tp_size) for rule in rules(cfg)}


def local_tensor(rule: Rule, reference: Callable[[str], torch.Tensor], tp_rank: int, tp_size: int) -> torch.Tensor:
    """Our TP-local tensor of one rule, from `reference(name)` (the full reference tensors)."""
    if rule.fused is not None:
        components = {n: _from_ref(reference(ref), rule) for n, ref in zip(rule.fused.names, rule.refs)}
        components = {n: t.reshape(t.shape[0], -1) for n, t in components.items()}  # lr weight [H,1,D] -> [H,D]
        return rule.fused.shard(components, tp_rank, tp_size).contiguous()
    t = _from_ref(reference(rule.refs[0]), rule)
    return (t if rule.split_dim is None else t.chunk(tp_size, dim=rule.split_dim)[tp_rank]).contiguous()


def to_full(locals_by_rank: list[dict[str, torch.Tensor]], cfg: TTTModelConfig) -> dict[str, torch.Tensor]:
    """Our parameters from every TP rank (in rank order) -> reference-format tensors."""
    shapes, full = reference_shapes(cfg), {}
    for rule in rules(cfg):
        pieces = [sd[rule.ours] for sd in locals_by_rank]
        if rule.fused is not None:
            for n, ref in zip(rule.fused.names, rule.refs):
                full[ref] = rule.fused.unshard(pieces)[n].reshape(shapes[ref])
        else:
            t = pieces[0] if rule.split_dim is None else torch.cat(pieces, dim=rule.split_dim)
            full[rule.refs[0]] = _to_ref(t, rule)
    return {n: t.contiguous() for n, t in full.items()}
