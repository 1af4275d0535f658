"""What each rank runs in the dist-checkpoint resharding test."""

import multiprocessing
import os
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from megatron_ttt.checkpoint.model_dir import write_weights
from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import to_full, to_local
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.models.weights import random_reference_weights


def load_then_save(rank: int, world: int, store, cfg, load_from: str | None, save_to: str | None):
    """A model at TP=world, loaded from the dist checkpoint `load_from` (or from seeded reference
    weights), then saved to `save_to`. Returns its weights in reference format and its logits."""
    groups = init_parallel(ParallelLayout(world), store=store)
    model = TTTLanguageModel(megatron_config(cfg, world), cfg, groups)
    if load_from:
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), load_from))
    else:
        weights = random_reference_weights(cfg, seed=3, dtype=torch.float32)
        model.load_state_dict(to_local(weights, cfg, dist.get_rank(groups.tp), world))
    if save_to:
        write_weights(model, Path(save_to))
    locals_by_rank = [None] * world
    dist.all_gather_object(locals_by_rank, {n: p.detach() for n, p in model.named_parameters()})
    tokens = torch.arange(2 * 19).reshape(2, 19) % cfg.vocab_size
    with torch.no_grad():
        logits = model.gather_logits(model(tokens))
    destroy_parallel()
    return to_full(locals_by_rank, cfg), logits


def _no_fork():
    raise AssertionError("a checkpoint save forked a process")


def save_in_process(rank: int, world: int, store, cfg, directory: str):
    """Save a TP=world model's weights with fork() forbidden, then read them back. Returns the
    helper processes alive after the save and whether every weight came back unchanged."""
    groups = init_parallel(ParallelLayout(world), store=store)
    model = TTTLanguageModel(megatron_config(cfg, world), cfg, groups)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    fork, os.fork = os.fork, _no_fork
    try:
        write_weights(model, Path(directory))
    finally:
        os.fork = fork
    children = [p.name for p in multiprocessing.active_children()]
    loaded = dist_checkpointing.load(model.sharded_state_dict(), directory)
    same = all(torch.equal(loaded[name], p) for name, p in model.named_parameters())
    destroy_parallel()
    return children, same
