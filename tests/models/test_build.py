"""Building and initializing from the parameter table: every parameter drawn once from its rule
(the modules only allocate), the same weights at any TP size, and the optimizer's weight-decay
groups from the same table."""

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.models.parameters import to_full
from megatron_ttt.models.presets import preset
from megatron_ttt.training.engine import parameter_groups
from tests.distributed import run_distributed

CASES = [("linear", "mamba", True), ("mlp", "transformer", False), ("lact", "transformer", False)]


def _config(layer_type: str, backbone: str, tied: bool):
    return preset("tiny", layer_type, backbone, vocab_size=256, tie_word_embeddings=tied)


@pytest.mark.parametrize("layer_type, backbone, tied", CASES)
def test_every_parameter_comes_from_its_rule(groups, layer_type, backbone, tied):
    """torch.empty is NaN-poisoned in the tests: a parameter the table left alone stays NaN."""
    cfg = _config(layer_type, backbone, tied)
    params = dict(build_model(cfg, groups, init_seed=7).named_parameters())
    table = {rule.ours: rule for rule in rules(cfg)}
    assert set(params) == set(table)
    for name, p in params.items():
        rule = table[name]
        assert torch.isfinite(p).all(), f"{name} was never initialized"
        if rule.init == "ones":
            assert torch.equal(p, torch.ones_like(p)), name
        elif rule.init == "zeros":
            assert torch.equal(p, torch.zeros_like(p)), name
        elif rule.init == "conv":
            assert p.abs().max() <= cfg.conv_kernel ** -0.5 and p.std() > 0.1, name
        else:
            std = cfg.init_std if rule.std is None else rule.std
            assert abs(p.std().item() / std - 1) < 0.3, f"{name}: std {p.std():.4f}, not {std}"
    again = dict(build_model(cfg, groups, init_seed=7).named_parameters())
    assert all(torch.equal(params[n], again[n]) for n in params), "the same seed drew other weights"


def test_weight_decay_follows_the_table(groups):
    model = build_model(_config("mlp", "mamba", False), groups, init_seed=0)
    decayed, plain = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decayed["params"]}
    assert {"embedding.weight", "output_layer.weight", "blocks.0.mixer.W1", "blocks.0.mixer.conv_q_weight",
            "blocks.0.pre_conv.weight", "blocks.0.mlp.fc2.weight"} <= decayed
    assert plain["weight_decay"] == 0.0
    assert not decayed & {"blocks.0.mixer.b1", "blocks.0.mixer.token_offset", "blocks.0.mixer.conv_q_bias",
                          "blocks.0.pre_conv.norm.weight", "final_norm.weight", "blocks.0.mixer.ttt_lr_bias"}


def _full_weights(rank, world, store, layer_type, backbone, tied):
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import parallel_groups

    with parallel_groups(ParallelLayout(world), store=store) as groups:
        cfg = _config(layer_type, backbone, tied)
        local = {n: p.detach().clone() for n, p in build_model(cfg, groups, init_seed=7).named_parameters()}
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, local)
        return to_full(everyone, cfg)


@pytest.mark.parametrize("layer_type, backbone, tied", CASES[:1])
def test_the_same_weights_at_any_tensor_parallel_size(layer_type, backbone, tied):
    (at_tp1,) = run_distributed(1, _full_weights, layer_type, backbone, tied)
    at_tp2 = run_distributed(2, _full_weights, layer_type, backbone, tied)[0]
    assert at_tp1.keys() == at_tp2.keys()
    assert all(torch.equal(at_tp1[n], at_tp2[n]) for n in at_tp1)
