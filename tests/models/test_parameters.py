"""The parameter table is the only description of the parameters: every parameter the modules
allocate has exactly one rule, at the shape the rule gives; building draws nothing from the
global random streams, and a seed alone decides the weights."""

from dataclasses import replace

import pytest
import torch
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from megatron_ttt.models.build import build_model
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.models.presets import preset
from tests.distributed import run_distributed

HYBRID = {"num_layers": 3, "layer_pattern": "T*W", "num_kv_heads": 2, "attention_window": 8}
CONFIGS = {
    "linear-mamba": preset("tiny", "linear", "mamba"),
    "mlp-transformer": preset("tiny", "mlp", "transformer"),
    "mlp-mamba-untied": preset("tiny", "mlp", "mamba", tie_word_embeddings=False),
    "linear-transformer-untied": preset("tiny", "linear", "transformer", tie_word_embeddings=False),
    "hybrid-mamba": replace(preset("tiny", "linear", "mamba"), **HYBRID),
    "hybrid-transformer-untied": replace(preset("tiny", "mlp", "transformer", tie_word_embeddings=False), **HYBRID),
}


def table_problems(cfg, shapes: dict[str, tuple[int, ...]], tp: int) -> list[str]:
    """What differs between a built model's parameter shapes (at TP `tp`) and the table."""
    table = rules(cfg)
    ours = [rule.ours for rule in table]
    refs = [ref for rule in table for ref in rule.refs]
    found = {"not in the table": set(shapes) - set(ours), "no such parameter": set(ours) - set(shapes),
             "named by two rules": {n for n in ours if ours.count(n) > 1},
             "reference names used twice": {n for n in refs if refs.count(n) > 1}}
    problems = [f"{what}: {sorted(names)}" for what, names in found.items() if names]
    return problems + [f"{rule.ours}: built {shapes[rule.ours]}, the rule gives {rule.local_shape(tp)}"
                       for rule in table if rule.ours in shapes and shapes[rule.ours] != rule.local_shape(tp)]


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_has_exactly_one_rule(groups, name):
    cfg = CONFIGS[name]
    assert not table_problems(cfg, _shapes(build_model(cfg, groups)), 1)


def test_a_parameter_missing_on_either_side_or_misshapen_is_found(groups):
    """The check itself: what a module added without a rule, a rule without its parameter."""
    cfg = CONFIGS["linear-mamba"]
    shapes = _shapes(build_model(cfg, groups))
    extra = shapes | {"blocks.0.mixer.extra": (4,)}
    missing = {n: s for n, s in shapes.items() if n != "blocks.1.mixer.W1"}
    misshapen = shapes | {"blocks.0.mixer.b1": (4, 1, 16)}
    assert table_problems(cfg, extra, 1) == ["not in the table: ['blocks.0.mixer.extra']"]
    assert table_problems(cfg, missing, 1) == ["no such parameter: ['blocks.1.mixer.W1']"]
    assert table_problems(cfg, misshapen, 1) == ["blocks.0.mixer.b1: built (4, 1, 16), the rule gives (4, 16)"]


@pytest.mark.parametrize("name", CONFIGS)
def test_each_parameter_is_tagged_with_its_tensor_parallel_split(groups, name):
    """megatron-core's attributes, which gradient norms read to count a split tensor on every TP
    rank and a replicated one once."""
    cfg = CONFIGS[name]
    params = dict(build_model(cfg, groups).named_parameters())
    for rule in rules(cfg):
        p = params[rule.ours]
        split = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
        assert split == rule.split_dim, rule.ours


def _problems_at(rank, world, store, names):
    """Per config, what the table gets wrong about this rank's shapes; one process group for all."""
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import parallel_groups

    with parallel_groups(ParallelLayout(world), store=store) as groups:
        return {name: table_problems(CONFIGS[name], _shapes(build_model(CONFIGS[name], groups)), world)
                for name in names}


def test_the_table_gives_each_ranks_shapes_under_tensor_parallelism():
    names = ["hybrid-mamba", "hybrid-transformer-untied"]
    assert run_distributed(2, _problems_at, names) == [{name: [] for name in names}] * 2


def _random_states() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.get_rng_state(), get_cuda_rng_tracker().get_states()


@pytest.mark.parametrize("init_seed", [None, 7])
def test_building_leaves_the_random_streams_alone(groups, init_seed):
    """A resumed run restores torch's and megatron-core's random states; building a model (the
    trainer's, a checkpoint's carrier) must not move them."""
    (cpu, tracker) = _random_states()
    assert tracker, "the tracker holds no states to compare"
    build_model(CONFIGS["hybrid-mamba"], groups, init_seed=init_seed)
    cpu_after, tracker_after = _random_states()
    assert torch.equal(cpu, cpu_after)
    assert tracker.keys() == tracker_after.keys()
    assert all(torch.equal(tracker[k], tracker_after[k]) for k in tracker)


def test_the_seed_alone_decides_the_weights(groups):
    cfg = CONFIGS["hybrid-mamba"]
    torch.manual_seed(1)
    first = {n: p.detach().clone() for n, p in build_model(cfg, groups, init_seed=7).named_parameters()}
    torch.manual_seed(2)
    torch.rand(100)
    with get_cuda_rng_tracker().fork():
        torch.rand(100)
    second = dict(build_model(cfg, groups, init_seed=7).named_parameters())
    assert all(torch.equal(first[n], second[n]) for n in first)
