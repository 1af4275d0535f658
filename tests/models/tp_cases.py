"""What each rank runs in the tensor-parallel tests: the model at TP=world against the twin."""

from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import to_full, to_local
from megatron_ttt.models.reference_model import reference_logits
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.models.weights import random_reference_weights

TINY = TTTModelConfig(vocab_size=64, hidden_size=32, num_heads=4, num_layers=2, intermediate_size=48,
                      mini_batch_size=8)
HYBRID = replace(TINY, num_layers=3, layer_pattern="TW*", attention_window=6, num_kv_heads=2)
"""TTT, sliding-window and full-attention layers, grouped-query attention."""
LACT = dict(lact_heads=2, lact_chunk_size=6, lact_fw_rank=4, attention_window=7)
"""A LaCT case's fields beside TINY's: 2 fast heads of 2 attention heads each, chunks of 6
(T = 20: three updates and a short last chunk), low-rank initial weights, a window under T."""


def case_model(base: TTTModelConfig, case: dict) -> TTTModelConfig:
    """`base` with a case's layer type and backbone (and a LaCT case's fields: LACT's, with the
    case's "lact" entries instead)."""
    lact = LACT | case.get("lact", {}) if case["layer_type"] == "lact" else {}
    return replace(base, layer_type=case["layer_type"], backbone=case["backbone"], **lact)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def twin(cfg: TTTModelConfig, weights: dict, tokens: torch.Tensor, labels: torch.Tensor):
    leaves = {n: t.clone().requires_grad_() for n, t in weights.items()}
    logits = reference_logits(leaves, cfg, tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    loss.sum().backward()
    return logits.detach(), loss.detach(), {n: t.grad for n, t in leaves.items()}


def compare_with_twin(rank: int, world: int, store, cases: list[dict], dtype=torch.float64) -> list[dict]:
    """For each case (layer_type, backbone, sequence_parallel, seq_len): the max relative errors of
    logits, loss and every gradient (gathered to the reference format) against the twin."""
    out = []
    for case in cases:
        cfg = case_model(TINY, case)
        groups = init_parallel(ParallelLayout(world, case["sequence_parallel"]), store=store)
        tp_group, tp_rank = groups.tp, dist.get_rank(groups.tp)
        weights = random_reference_weights(cfg, seed=1, dtype=dtype)
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(0, cfg.vocab_size, (2, case["seq_len"]), generator=g)
        labels = torch.randint(0, cfg.vocab_size, (2, case["seq_len"]), generator=g)
        model = TTTLanguageModel(megatron_config(cfg, world, case["sequence_parallel"], dtype), cfg, groups)
        model.load_state_dict(to_local(weights, cfg, tp_rank, world))
        # Gradients through the gathered logits: megatron-core's vocab-parallel cross entropy
        # computes in float32, which would hide float64 differences; it is compared on its own.
        logits = model.gather_logits(model(tokens))
        F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").backward()
        loss = model(tokens, labels).detach()
        local_grads = {n: p.grad for n, p in model.named_parameters()}
        gathered = [None] * world
        dist.all_gather_object(gathered, local_grads, group=tp_group)
        grads = to_full(gathered, cfg)
        ref_logits, ref_loss, ref_grads = twin(cfg, weights, tokens, labels)
        out.append(case | {"logits": rel(logits.detach(), ref_logits), "loss": rel(loss, ref_loss),
                           "grads": max(rel(grads[n], ref_grads[n]) for n in ref_grads),
                           "worst": max(ref_grads, key=lambda n: rel(grads[n], ref_grads[n]))})
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return out


def hybrid_outputs(rank: int, world: int, store, cfg: TTTModelConfig, sequence_parallel: bool, seq_len: int):
    """A hybrid model at TP=world in float64 from seeded weights: its logits and every gradient in
    reference format (gathered over TP)."""
    groups = init_parallel(ParallelLayout(world, sequence_parallel), store=store)
    tp_group = groups.tp
    tp_rank = dist.get_rank(groups.tp)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.vocab_size, (2, seq_len), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, seq_len), generator=g)
    model = TTTLanguageModel(megatron_config(cfg, world, sequence_parallel, torch.float64), cfg, groups)
    model.load_state_dict(to_local(random_reference_weights(cfg, seed=1), cfg, tp_rank, world))
    logits = model.gather_logits(model(tokens))
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").backward()
    gathered = [None] * world
    dist.all_gather_object(gathered, {n: p.grad for n, p in model.named_parameters()}, group=tp_group)
    destroy_parallel()
    return logits.detach(), to_full(gathered, cfg)
