"""`mttt convert`: reference checkpoint <-> our model checkpoint, and a training checkpoint (any
TP, DP, ZeRO stage) -> either; each conversion checking itself.

A conversion computes the next-token log-probabilities of fixed token sequences with the source
and with the converted model, and fails if they differ beyond float32 rounding; the destination
appears only after the check passes. Reference-format weights go through the dense reference twin
(an implementation of its own); mttt-to-mttt compares the model it loaded with the one it wrote,
which works for hybrid models too (the reference format has no attention layers).

A Hugging Face Llama directory converts the same way (llama.py maps it): with every layer
attention the converted model is checked against a Llama twin written from Hugging Face's
formulation (models/llama_reference.py); a hybrid, whose TTT layers Llama has no output for, is
checked by loading what was written back.

A training checkpoint `RUN/checkpoints/step-N/` is itself a model directory (its layout-free
part, see layout_free.py); a run directory stands for its latest one (run_dir.py).
"""

from pathlib import Path

import torch
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.atomic import written_atomically
from megatron_ttt.checkpoint.checksums import verify_model_source
from megatron_ttt.checkpoint.llama import (
    HybridLayout,
    hybrid_config,
    hybrid_tensors,
    llama_reference_tensors,
    llama_tokenizer,
    read_llama_config,
    read_llama_weights,
)
from megatron_ttt.checkpoint.model_dir import copy_tokenizer, load_model, save_model, tokenizer_of
from megatron_ttt.checkpoint.reference_io import check_reference_model, read_reference, write_reference
from megatron_ttt.checkpoint.run_dir import CheckpointError, resolve_model_source
from megatron_ttt.models.build import build_model
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import to_full, to_local
from megatron_ttt.models.llama_reference import llama_logits
from megatron_ttt.models.reference_model import reference_logits
from megatron_ttt.models.scoring import next_token_logprobs, token_logprobs

CHECK_TOLERANCE = 1e-4
"""Largest allowed |difference| of a float32 log-probability (values are O(1-10))."""


def check_sequences(cfg: TTTModelConfig) -> torch.Tensor:
    """Two fixed sequences spanning two full mini-batches and a partial third."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, cfg.vocab_size, (2, 2 * cfg.mini_batch_size + 5), generator=g)


def reference_logprobs(tensors: dict[str, torch.Tensor], cfg: TTTModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return next_token_logprobs(reference_logits({n: t.float() for n, t in tensors.items()}, cfg, tokens), tokens)


def self_check(source: dict[str, torch.Tensor], model: TTTLanguageModel, what: str) -> float:
    """Reference-format `source` weights against the converted model."""
    tokens = check_sequences(model.ttt)
    return _compare(reference_logprobs(source, model.ttt, tokens), token_logprobs(model, tokens), what)


def _compare(want: torch.Tensor, got: torch.Tensor, what: str) -> float:
    diff = (want - got).abs().max().item()
    if not diff <= CHECK_TOLERANCE:
        raise CheckpointError(f"{what}: the converted model's log-probabilities differ from the source's by {diff:.2e} "
                              f"(allowed {CHECK_TOLERANCE:.0e}); nothing was written")
    return diff


def hf_to_mttt(src: Path, dst: Path, groups: ProcessGroupCollection) -> float:
    """Reference directory -> our model checkpoint; returns the self-check's max difference."""
    cfg, tensors = read_reference(src)
    model = build_model(cfg, groups)
    model.load_state_dict(to_local(tensors, cfg, source=str(src)))
    diff = self_check(tensors, model, f"hf-to-mttt {src}")
    save_model(model, dst, tokenizer_of(src))
    return diff


def mttt_to_mttt(src: Path, dst: Path, groups: ProcessGroupCollection) -> float:
    """A training checkpoint, run directory or model directory -> a model directory holding only
    the weights (and the tokenizer, where the source carries one), checked by loading it back at
    the current TP size; returns the self-check's max difference. Collective over the process
    group."""
    src = resolve_model_source(src)
    verify_model_source(src)
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; choose a new destination")
    model = load_model(src, groups)
    tokens = check_sequences(model.ttt)
    want = token_logprobs(model, tokens)
    with written_atomically(dst, renames=torch.distributed.get_rank() == 0, shared=True) as checking:
        torch.distributed.barrier()
        save_model(model, checking, tokenizer_of(src))
        diff = _compare(want, token_logprobs(load_model(checking, groups), tokens), f"mttt-to-mttt {src}")
    torch.distributed.barrier()
    return diff


def mttt_to_hf(src: Path, dst: Path, groups: ProcessGroupCollection) -> float:
    """Our model checkpoint, a training checkpoint written at any layout, or a run directory -> one
    consolidated reference directory (in one process); returns the self-check's max difference."""
    src = resolve_model_source(src)
    verify_model_source(src)
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; choose a new destination")
    model = load_model(src, groups)
    check_reference_model(model.ttt, str(src))
    tensors = to_full([{n: p.detach() for n, p in model.named_parameters()}], model.ttt)
    with written_atomically(dst) as tmp:
        write_reference(tmp, model.ttt, tensors)
        copy_tokenizer(tokenizer_of(src), tmp)
        return self_check(read_reference(tmp)[1], model, f"mttt-to-hf {src}")


def llama_to_mttt(src: Path, dst: Path, groups: ProcessGroupCollection, layout: HybridLayout = HybridLayout()) -> float:
    """A Hugging Face Llama directory -> a model directory (every layer attention, or the hybrid
    `layout` asks for), with its sentencepiece tokenizer; returns the self-check's max difference.
    Everything is read and checked before anything is written."""
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; choose a new destination")
    llama = read_llama_config(src)
    cfg = hybrid_config(llama, layout)
    tokenizer = llama_tokenizer(src, cfg.vocab_size)
    weights = read_llama_weights(src)
    model = build_model(cfg, groups)
    attention = llama_reference_tensors(weights, llama, str(src))
    model.load_state_dict(to_local(hybrid_tensors(attention, cfg, layout.seed), cfg, source=str(src)))
    tokens = check_sequences(cfg)
    if set(cfg.mixers) == {"attention"}:
        with torch.no_grad():
            want = next_token_logprobs(llama_logits(weights, llama, tokens), tokens)
    else:
        want = token_logprobs(model, tokens)
    with written_atomically(dst, shared=True) as checking:
        save_model(model, checking, tokenizer)
        return _compare(want, token_logprobs(load_model(checking, groups), tokens), f"llama-to-mttt {src}")
