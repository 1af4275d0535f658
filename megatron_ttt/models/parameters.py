"""Reference-format (`TTTForCausalLM`) tensors <-> our parameters on each TP rank, by the
parameter table (models/parameter_table.py): `to_local` and `to_full` apply its rules in the two
directions and check every name and shape on the way.
"""

from collections.abc import Callable

import torch

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.fused import FusedColumns
from megatron_ttt.models.parameter_table import Rule, reference_shapes, rules


class ReferenceFormatError(UserInputError):
    """Reference-format tensors that do not fit the model: the message lists every offending name."""


def check_reference(full: dict[str, torch.Tensor], cfg: TTTModelConfig, source: str) -> None:
    """Raise ReferenceFormatError listing missing, unexpected and misshapen tensors."""
    # With tied embeddings the reference usually saves no lm_head; a copy of the embedding is ignored.
    check_tensors(full, reference_shapes(cfg), source, {"lm_head.weight"} if cfg.tie_word_embeddings else set())


def check_tensors(full: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str,
                  ignored: set[str] = frozenset()) -> None:
    """Raise ReferenceFormatError listing the tensors of `full` missing from, unexpected by (less
    `ignored`) and misshapen against `expected` (name -> shape)."""
    extra = sorted(set(full) - set(expected) - ignored)
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
        return _shard(rule.fused, components, tp_rank, tp_size).contiguous()
    t = _from_ref(reference(rule.refs[0]), rule)
    return (t if rule.split_dim is None else t.chunk(tp_size, dim=rule.split_dim)[tp_rank]).contiguous()


def _shard(columns: FusedColumns, full: dict[str, torch.Tensor], tp_rank: int, tp_size: int) -> torch.Tensor:
    """Full component weights [size, in] -> rank `tp_rank`'s fused weight [width(tp), in]."""
    return torch.cat([full[n].chunk(tp_size, dim=0)[tp_rank] for n in columns.names], dim=0)


def _unshard(columns: FusedColumns, local_weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's fused weight, in rank order -> the full component weights."""
    pieces = [w.split(columns.local_sizes(len(local_weights)), dim=0) for w in local_weights]
    return {n: torch.cat([p[i] for p in pieces], dim=0) for i, n in enumerate(columns.names)}


def to_full(locals_by_rank: list[dict[str, torch.Tensor]], cfg: TTTModelConfig) -> dict[str, torch.Tensor]:
    """Our parameters from every TP rank (in rank order) -> reference-format tensors."""
    full = {}
    for rule in rules(cfg):
        pieces = [sd[rule.ours] for sd in locals_by_rank]
        if rule.fused is not None:
            components = _unshard(rule.fused, pieces)
            full |= {ref: components[n].reshape(shape)
                     for n, ref, shape in zip(rule.fused.names, rule.refs, rule.shapes)}
        else:
            t = pieces[0] if rule.split_dim is None else torch.cat(pieces, dim=rule.split_dim)
            full[rule.refs[0]] = _to_ref(t, rule)
    return {n: t.contiguous() for n, t in full.items()}
