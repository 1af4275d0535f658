"""What each rank runs in the dist-checkpoint resharding test."""

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameters import to_full, to_local
from megatron_ttt.parallel.setup import ModelParallel, destroy_parallel, init_parallel
from tests.models.weights import random_reference_weights


def load_then_save(rank: int, world: int, store, cfg, load_from: str | None, save_to: str | None):
    """A model at TP=world, loaded from the dist checkpoint `load_from` (or from seeded reference
    weights), then saved to `save_to`. Returns its weights in reference format and its logits."""
    init_parallel(ModelParallel(world), store=store)
    model = TTTLanguageModel(megatron_config(cfg, world), cfg)
    if load_from:
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), load_from))
    else:
        weights = random_reference_weights(cfg, seed=3, dtype=torch.float32)
        model.load_state_dict(to_local(weights, cfg, parallel_state.get_tensor_model_parallel_rank(), world))
    if save_to:
        if rank == 0:
            Path(save_to).mkdir()
        dist.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), save_to)
    locals_by_rank = [None] * world
    dist.all_gather_object(locals_by_rank, {n: p.detach() for n, p in model.named_parameters()})
    tokens = torch.arange(2 * 19).reshape(2, 19) % cfg.vocab_size
    with torch.no_grad():
        logits = model.gather_logits(model(tokens))
    destroy_parallel()
    return to_full(locals_by_rank, cfg), logits
