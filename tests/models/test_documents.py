"""Packed documents under document_boundaries=reset: every document computes what it would alone.

The invariant: the log-probabilities of a packed sample equal, document by document, those of
each document run alone from an empty state, for both layer types and backbones, a hybrid with
full and sliding-window attention, and every inner-loop backend that runs on a CPU; the
boundaries sit at position 0, inside a mini-batch, on a mini-batch edge, two EOS in a row, and a
document longer than the sample. Changing one document changes neither the outputs nor the
gradients of another; decoding through an EOS equals one forward; carry ignores EOS."""

from dataclasses import replace

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.compiled_decode import CompiledDecoder
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.run_options import InnerLoopOptions
from tests.models.tp_cases import HYBRID, TINY, case_model

EOS = 63
RESET = replace(TINY, document_boundaries="reset", eos_token_id=EOS)
EOS_AT = ([4, 7, 8, 15, 27], [10])
"""Row 0: documents of 5, 3, 1 (EOS after EOS), 7 (the next starts on a mini-batch edge, b = 8),
12 and 12 tokens (the last cut by the sample's end); row 1: 11 tokens, then 29, over several
mini-batches."""
LENGTH = 40


def packed_tokens(seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(0, EOS, (2, LENGTH), generator=torch.Generator().manual_seed(seed))
    for row, positions in enumerate(EOS_AT):
        tokens[row, positions] = EOS
    return tokens


def documents(row: int) -> list[tuple[int, int]]:
    """(first, stop) of each document of a row of packed_tokens."""
    firsts = [0] + [t + 1 for t in EOS_AT[row]]
    return list(zip(firsts, firsts[1:] + [LENGTH]))


def log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(tokens).float(), dim=-1)


def worst_document_error(model, tokens: torch.Tensor) -> float:
    """Largest |log p(packed) - log p(alone)| over every token of every document."""
    packed = log_probs(model, tokens)
    worst = 0.0
    for row in range(tokens.shape[0]):
        for first, stop in documents(row):
            alone = log_probs(model, tokens[row : row + 1, first:stop])[0]
            worst = max(worst, (packed[row, first:stop] - alone).abs().max().item())
    return worst


CONFIGS = {
    "linear-mamba": RESET,
    "mlp-transformer": replace(RESET, layer_type="mlp", backbone="transformer"),
    "linear-transformer": replace(RESET, backbone="transformer"),
    "mlp-mamba": replace(RESET, layer_type="mlp"),
    "hybrid-TW*": replace(HYBRID, backbone="mamba", document_boundaries="reset", eos_token_id=EOS),
    "lact": case_model(RESET, {"layer_type": "lact", "backbone": "transformer"}),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_document_scores_as_if_alone(groups, name):
    model = build_model(CONFIGS[name], groups, init_seed=0)
    with torch.no_grad():
        assert worst_document_error(model, packed_tokens()) < 1e-5


@pytest.mark.parametrize("backend, name", [("manual", "linear-mamba"), ("manual", "mlp-transformer"),
                                           ("compile", "linear-transformer")])
def test_each_backend_keeps_documents_apart(groups, backend, name):
    model = build_model(CONFIGS[name], groups, InnerLoopOptions(backend=backend, time_checkpoint_group=2), init_seed=0)
    with torch.no_grad():
        assert worst_document_error(model, packed_tokens()) < 1e-5


@pytest.mark.parametrize("name", ["linear-mamba", "hybrid-TW*"])
def test_another_document_changes_neither_outputs_nor_gradients(groups, name):
    """Document 4 of row 0 (tokens 16..27) against new tokens in documents 1 and 2 before it, in
    float64: equal to rounding (the convolutions subtract other documents' taps from the fast
    convolution, so A's values pass through to cancel)."""
    model = build_model(CONFIGS[name], groups, params_dtype=torch.float64, init_seed=0)
    first, stop = documents(0)[4]

    def run(tokens):
        model.zero_grad()
        logits = model(tokens)
        logits[0, first:stop].log_softmax(-1).sum().backward()
        return logits.detach()[0, first:stop], {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None}

    tokens = packed_tokens()
    changed = tokens.clone()
    changed[0, :4] = torch.arange(4)
    changed[0, 5:7] = torch.tensor([11, 12])
    (out, grads), (out_changed, grads_changed) = run(tokens), run(changed)
    assert (out - out_changed).abs().max() < 1e-12
    assert grads.keys() == grads_changed.keys()
    for n in grads:
        assert (grads[n] - grads_changed[n]).abs().max() <= 1e-10 * grads[n].abs().max().clamp_min(1e-30), n


@pytest.mark.parametrize("name", ["mlp-mamba", "hybrid-TW*", "lact"])
def test_decoding_through_eos_equals_one_forward(groups, name):
    """A prompt with EOS inside, then one token at a time across two more EOS (rows at different
    positions in their documents); the cache stays the same size past every boundary."""
    cfg = CONFIGS[name]
    model = build_model(cfg, groups, init_seed=0)
    tokens = packed_tokens()[:, :30]
    with torch.no_grad():
        full = model(tokens)
        cache = InferenceCache.empty(cfg.num_layers)
        pieces, sizes = [model(tokens[:, :13], cache=cache)], []
        for t in range(13, 30):
            pieces.append(model(tokens[:, t:t + 1], cache=cache))
            sizes.append(cache.nbytes())
    assert ((torch.cat(pieces, dim=1) - full).abs().max() / full.abs().max()) < 1e-5
    if "*" not in cfg.layer_pattern:
        assert len(set(sizes)) == 1


def test_the_fixed_shape_decoder_restarts_at_eos(groups):
    """CompiledDecoder's step (run eagerly here; test_compiled_decode compiles it) carries where
    each sequence stands in its document: its logits equal the eager cached path's."""
    model = build_model(CONFIGS["mlp-mamba"], groups, init_seed=0)
    tokens = packed_tokens()[:, :30]
    with torch.no_grad():
        cache = InferenceCache.empty(model.ttt.num_layers)
        model.last_logits(tokens[:, :13], cache)
        decoder = CompiledDecoder(model, cache, compile=False)
        eager = [model.last_logits(tokens[:, t:t + 1], cache) for t in range(13, 30)]
        fixed = [decoder(tokens[:, t:t + 1]) for t in range(13, 30)]
    assert (torch.stack(fixed) - torch.stack(eager)).abs().max() < 1e-5 * torch.stack(eager).abs().max()


def test_carry_reads_across_eos(groups):
    """The same weights under carry: a document's outputs depend on the one before it."""
    reset = build_model(RESET, groups, init_seed=0)
    carry = build_model(replace(RESET, document_boundaries="carry"), groups, init_seed=0)
    carry.load_state_dict(reset.state_dict())
    tokens = packed_tokens()
    with torch.no_grad():
        assert worst_document_error(carry, tokens) > 1e-3
        assert (carry(tokens)[:, :5] - reset(tokens)[:, :5]).abs().max() < 1e-6
