"""Inference with a cache: a prompt (prefill, dual form) then one token at a time (decode step)
gives the logits of one full forward over the whole sequence, for both layer types and both
backbones, at prompt lengths that are not multiples of the mini-batch and across its boundaries;
the cache's size does not grow with the sequence."""

import itertools

import pytest
import torch

from megatron_ttt.models.parameters import to_local
from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.language_model import TTTLanguageModel
from tests.models.tp_cases import TINY, case_model, rel
from tests.models.weights import random_reference_weights

CASES = list(itertools.product(("linear", "mlp"), ("transformer", "mamba"))) + [("lact", "transformer")]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def build(groups, layer_type: str, backbone: str, dtype: torch.dtype) -> TTTLanguageModel:
    cfg = case_model(TINY, {"layer_type": layer_type, "backbone": backbone})
    model = TTTLanguageModel(megatron_config(cfg, 1, False, dtype), cfg, groups)
    model.load_state_dict(to_local(random_reference_weights(cfg, seed=3, dtype=dtype), cfg, 0, 1))
    return model.eval()


def pieces_logits(model: TTTLanguageModel, tokens: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    """The logits of `tokens` fed through one cache in pieces of the given lengths, then one by one."""
    cache, out, start = InferenceCache.empty(len(model.blocks)), [], 0
    for length in pieces + [1] * (tokens.shape[1] - sum(pieces)):
        out.append(model(tokens[:, start:start + length], cache=cache))
        start += length
    assert cache.position == tokens.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("dtype,pieces", [(torch.float64, [5]), (torch.float64, [8, 3]), (torch.float32, [13])],
                         ids=["f64-prompt5", "f64-prompt8+3", "f32-prompt13"])
@pytest.mark.parametrize("layer_type,backbone", CASES)
def test_decode_equals_full_forward(groups, layer_type, backbone, dtype, pieces):
    model = build(groups, layer_type, backbone, dtype)
    tokens = torch.randint(0, TINY.vocab_size, (2, 29), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(tokens)
        streamed = pieces_logits(model, tokens, pieces)
    for t in range(tokens.shape[1]):
        assert rel(streamed[:, t], full[:, t]) < TOL[dtype], f"token {t}: {rel(streamed[:, t], full[:, t]):.2e}"


@pytest.mark.parametrize("layer_type,backbone", CASES)
def test_cache_size_is_constant(groups, layer_type, backbone):
    model = build(groups, layer_type, backbone, torch.float32)
    cache = InferenceCache.empty(len(model.blocks))
    sizes = []
    with torch.no_grad():
        model(torch.zeros(1, 11, dtype=torch.int64), cache=cache)
        for _ in range(2 * TINY.mini_batch_size + 3):
            model(torch.zeros(1, 1, dtype=torch.int64), cache=cache)
            sizes.append(cache.nbytes())
    assert len(set(sizes)) <= 2, sizes  # with or without a partial mini-batch's gradient sum
    assert cache.nbytes() > 0


def test_cache_for_another_model_is_refused(groups):
    model = build(groups, "linear", "mamba", torch.float32)
    with pytest.raises(ValueError, match="cache holds 3 layers, the model has 2"):
        model(torch.zeros(1, 4, dtype=torch.int64), cache=InferenceCache.empty(3))


@pytest.mark.parametrize("layer_type,backbone", CASES)
def test_decode_work_does_not_grow_with_the_prefix(groups, layer_type, backbone):
    """The same floating-point operations for a token after 9 or after 201 tokens (both one
    token into a mini-batch, so the same branch of the step)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(groups, layer_type, backbone, torch.float32)
    flops = []
    with torch.no_grad():
        for prefix in (9, 201):
            cache = InferenceCache.empty(len(model.blocks))
            model(torch.zeros(1, prefix, dtype=torch.int64), cache=cache)
            with FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 1, dtype=torch.int64), cache=cache)
            flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0
