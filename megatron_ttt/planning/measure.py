"""Peak tensor memory of a few real training steps, per rank: what the planner's memory model
is checked against.

    torchrun --nproc-per-node=2 -m megatron_ttt.planning.measure OUT.json [section.key=value ...]

Each rank builds the model, DeepSpeed engine and data loader exactly as `mttt pretrain` does
(`training.trainer.build`) and runs `train.steps` optimizer steps of `training.trainer.train_step`.
On a GPU the peak is `torch.cuda.max_memory_allocated` (reset just before the model is built).
On the CPU it comes from the allocator itself: with torch's profiler recording memory, every
allocation and free of a tensor storage is an event with its size, and the running sum of those
events from just before the model is built is this rank's live tensor memory; its maximum is
the peak. Both count tensor storages only (parameters, gradients, optimizer states,
activations, DeepSpeed's buffers), not Python objects, libraries or the CUDA context, and
both start from what was allocated before the model existed (the runtime's baseline), so the
baseline is excluded by construction. Rank 0 writes one row per rank to OUT.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _cpu_peak(events) -> int:
    """The maximum running sum of the profiler's memory events (bytes; frees are negative)."""
    live = peak = 0
    for event in sorted((e for e in events if e.name() == "[memory]" and e.device_type().name == "CPU"),
                        key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _train(config, groups, steps: int) -> bool:
    from megatron_ttt.data_prep.corpus import default_cache_dir
    from megatron_ttt.training.trainer import build, set_schedules, train_step

    run = build(config, groups, default_cache_dir())
    batches = iter(run.loader)
    for _ in range(steps):
        set_schedules(run)
        train_step(run, batches)
        run.step += 1
    return run.engine.module.sequence_parallel


def peak_bytes(config, groups) -> tuple[int, bool]:
    """This rank's peak tensor memory over building and `config.train.steps` steps, and whether
    the model that ran was built sequence parallel."""
    import deepspeed  # noqa: F401  imported before the window: its import is runtime baseline

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sequence_parallel = _train(config, groups, config.train.steps)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, sequence_parallel
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sequence_parallel = _train(config, groups, config.train.steps)
    return _cpu_peak(prof.profiler.kineto_results.events()), sequence_parallel


def planned(config, nproc: int, sequence_parallel: bool):
    """The model and Layout a pretraining config describes on `nproc` CPU processes (the
    vocabulary rounded as the trainer rounds the bundled tokenizer's). `sequence_parallel` is
    what the measured model was built with (a measured row says), not what the config asked for."""
    from megatron_ttt.config.model import trained_model
    from megatron_ttt.planning.layout import Layout

    parallel, data = config.parallel, config.data
    model = trained_model(config, data.bundled_vocab_size)
    layout = Layout(1, nproc, tp=parallel.tensor_parallel, cp=parallel.context_parallel, zero=parallel.zero_stage,
                    seq_len=data.seq_len,
                    micro_batch=data.micro_batch_size, global_batch_tokens=data.global_batch_tokens,
                    time_checkpoint_group=parallel.time_checkpoint_group, block_ckpt=parallel.block_checkpointing,
                    dtype=config.train.dtype, sequence_parallel=sequence_parallel, optimizer=config.optimizer.name)
    return model, layout

def main(argv: list[str]) -> int:
    from megatron_ttt.config import load_config
    from megatron_ttt.parallel.setup import parallel_groups

    out, overrides = Path(argv[0]), argv[1:]
    config = load_config(None, overrides)
    with parallel_groups(config.layout(), seed=config.train.seed) as groups:
        peak, sequence_parallel = peak_bytes(config, groups)
        row = {"rank": dist.get_rank(), "tp_rank": dist.get_rank(groups.tp), "cp_rank": dist.get_rank(groups.cp),
               "dp_rank": dist.get_rank(groups.dp), "peak_bytes": peak, "sequence_parallel": sequence_parallel}
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        if dist.get_rank() == 0:
            out.write_text(json.dumps(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

