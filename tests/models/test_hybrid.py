"""Hybrid models: TTT layers beside full and sliding-window causal attention, by layer pattern.
The pattern is validated; TP=2 with sequence parallelism equals TP=1; prefill then token-by-token
decoding equals one forward for every layer kind, a window layer's cache staying bounded; the
parameter count is exact; the reference format refuses a hybrid."""

from dataclasses import replace

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.presets import parameter_count
from tests.distributed import run_distributed
from tests.models.tp_cases import HYBRID, hybrid_outputs, rel


@pytest.mark.parametrize("fields, message", [
    (dict(layer_pattern="TX*"), "unknown symbols ['X']"),
    (dict(layer_pattern="TW"), "layer_pattern 'TW' has 2 symbols for 3 layers"),
    (dict(attention_window=0), "attention_window 0 must be at least 1"),
    (dict(num_kv_heads=3), "num_kv_heads 3 must divide num_heads 4"),
])
def test_a_bad_pattern_is_named(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")):
        replace(HYBRID, **fields)


def test_an_empty_pattern_is_every_layer_ttt():
    assert TTTModelConfig(num_layers=3).mixers == ("ttt", "ttt", "ttt")
    assert HYBRID.mixers == ("ttt", "window", "attention")


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_tensor_and_sequence_parallel_equal_one_rank(backbone):
    cfg = replace(HYBRID, backbone=backbone)
    logits_1, grads_1 = run_distributed(1, hybrid_outputs, cfg, False, 22)[0]
    logits_2, grads_2 = run_distributed(2, hybrid_outputs, cfg, True, 22)[0]
    assert rel(logits_2, logits_1) < 1e-10
    assert grads_2.keys() == grads_1.keys()
    worst = max(grads_1, key=lambda n: rel(grads_2[n], grads_1[n]))
    assert rel(grads_2[worst], grads_1[worst]) < 1e-10, worst


@pytest.mark.parametrize("pattern", ["TW*", "W", "*"])
def test_decoding_token_by_token_equals_one_forward(groups, pattern):
    cfg = replace(HYBRID, num_layers=len(pattern), layer_pattern=pattern, backbone="mamba")
    model = build_model(cfg, groups, init_seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
        cache = InferenceCache.empty(cfg.num_layers)
        pieces = [model(tokens[:, :9], cache=cache)]
        sizes = []
        for t in range(9, 29):
            pieces.append(model(tokens[:, t:t + 1], cache=cache))
            sizes.append(cache.nbytes())
    assert rel(torch.cat(pieces, dim=1), full) < 1e-5
    if "*" not in pattern:  # TTT and window layers only: the cache does not grow
        assert len(set(sizes)) == 1, sizes


def test_the_parameter_count_is_exact(groups):
    for backbone in ("transformer", "mamba"):
        cfg = replace(HYBRID, backbone=backbone)
        assert sum(p.numel() for p in build_model(cfg, groups, init_seed=0).parameters()) == parameter_count(cfg)
