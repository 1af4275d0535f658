"""What each rank runs in the context-parallel tests: the model at TP x CP = world on its slice of
the sequence against the dense twin on the whole one."""

from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import to_full, to_local
from megatron_ttt.parallel.context import all_slices, local_slice
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.models.tp_cases import HYBRID, TINY, case_model, rel, twin
from tests.models.weights import random_reference_weights


EOS_AT = ([2, 9, 13], [10, 16])
"""Under document_boundaries=reset: row 0 has a document beginning right at the CP = 2 slice
edge (token 10), row 1 one just after it (the pre-conv's halo reaches into the earlier one)."""


def case_config(case: dict):
    base = HYBRID if case.get("hybrid") else TINY
    documents = {"document_boundaries": "reset", "eos_token_id": base.vocab_size - 1} if case.get("reset") else {}
    return replace(case_model(base, case), **documents,
                   **({"num_kv_heads": case["kv_heads"]} if "kv_heads" in case else {}))


def case_tokens(cfg, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.vocab_size, (2, case["seq_len"]), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, case["seq_len"]), generator=g)
    if case.get("reset"):
        for row, positions in enumerate(EOS_AT):
            tokens[row, positions] = cfg.eos_token_id
    return tokens, labels


def one_rank_model(cfg, weights: dict, tokens: torch.Tensor, labels: torch.Tensor, store):
    """The reference of hybrids and packed documents (the dense twin has no attention layers and
    runs one sequence): the model unsplit, TP = CP = 1 (test_tensor_parallel and test_hybrid tie
    it to the twin and to TP > 1, test_documents to each document alone)."""
    groups = init_parallel(ParallelLayout(), store=store)
    model = TTTLanguageModel(megatron_config(cfg, params_dtype=torch.float64), cfg, groups)
    model.load_state_dict(to_local(weights, cfg, 0, 1))
    logits = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").backward()
    loss = model(tokens, labels).detach()
    parallel_state.destroy_model_parallel()
    return logits.detach(), loss, to_full([{n: p.grad for n, p in model.named_parameters()}], cfg)


def compare_with_twin(rank: int, world: int, store, cases: list[dict]) -> list[dict]:
    """For each case (layer_type, backbone, hybrid, tp, sequence_parallel, seq_len): the max
    relative errors of logits, loss and every gradient (summed over CP, gathered over TP, in the
    reference format) against the twin on the whole sequence (hybrids: the model at one rank)."""
    out = []
    for case in cases:
        cfg, tp = case_config(case), case["tp"]
        cp = world // tp
        weights = random_reference_weights(cfg, seed=1, dtype=torch.float64)
        tokens, labels = case_tokens(cfg, case)
        reference = (one_rank_model(cfg, weights, tokens, labels, store) if case.get("hybrid") or case.get("reset")
                     else twin(cfg, weights, tokens, labels))
        groups = init_parallel(ParallelLayout(tp, case["sequence_parallel"], cp), store=store)
        tp_group = groups.tp
        tp_rank = dist.get_rank(groups.tp)
        cp_group = groups.cp
        mine, my_labels = local_slice(tokens, 1, cp_group), local_slice(labels, 1, cp_group)
        config = megatron_config(cfg, tp, case["sequence_parallel"], torch.float64, context_parallel=cp)
        model = TTTLanguageModel(config, cfg, groups)
        model.load_state_dict(to_local(weights, cfg, tp_rank, tp))
        logits = model.gather_logits(model(mine))
        F.cross_entropy(logits.flatten(0, 1), my_labels.flatten(), reduction="sum").backward()
        loss = all_slices(model(mine, my_labels).detach(), 1, cp_group)
        local_grads = {}
        for n, p in model.named_parameters():
            dist.all_reduce(p.grad, group=cp_group)
            local_grads[n] = p.grad
        gathered = [None] * tp
        dist.all_gather_object(gathered, local_grads, group=tp_group)
        grads = to_full(gathered, cfg)
        ref_logits, ref_loss, ref_grads = reference
        out.append(case | {"logits": rel(all_slices(logits.detach(), 1, cp_group), ref_logits),
                           "loss": rel(loss, ref_loss), "grads": max(rel(grads[n], ref_grads[n]) for n in ref_grads),
                           "worst": max(ref_grads, key=lambda n: rel(grads[n], ref_grads[n]))})
        parallel_state.destroy_model_parallel()
    destroy_parallel()
    return out
