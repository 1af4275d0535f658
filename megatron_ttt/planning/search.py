"""The best layouts: every combination of the options left open, those that fit, fastest first."""

import itertools
from dataclasses import dataclass, replace

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning.estimate import Estimate, estimate
from megatron_ttt.planning.hardware import GPU, Assumptions
from megatron_ttt.planning.layout import Layout, check
from megatron_ttt.planning.memory import Memory, memory

TIME_GROUPS = (0, 1, 2, 4, 8, 16)
"""Time-axis checkpoint groups tried (mini-batches, LaCT chunks; 0 off)."""
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Plan:
    layout: Layout
    memory: Memory
    estimate: Estimate


def plan(model: TTTModelConfig, layout: Layout, gpu: GPU, assume: Assumptions) -> Plan:
    check(layout, model)
    return Plan(layout, memory(model, layout, assume, on_gpu=gpu.name != "cpu"), estimate(model, layout, gpu, assume))


def candidates(base: Layout, open_options: set[str]) -> list[Layout]:
    """Layouts varying the options in `open_options` (tp, cp, zero, time_checkpoint_group, micro_batch,
    block_ckpt)."""
    choices = {
        "tp": [t for t in (1, 2, 4, 8, 16) if t <= base.gpus_per_node and base.gpus_per_node % t == 0],
        "cp": [c for c in (1, 2, 4, 8, 16, 32) if c <= base.world],
        "zero": [0, 1, 2, 3], "time_checkpoint_group": list(TIME_GROUPS), "micro_batch": list(MICRO_BATCHES),
        "block_ckpt": [False, True],
    }
    names = sorted(open_options)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(choices[n] for n in names))]


def search(model: TTTModelConfig, base: Layout, open_options: set[str], gpu: GPU, assume: Assumptions,
           keep: int = 5) -> list[Plan]:
    """The `keep` fastest layouts that fit (ties: less memory first)."""
    plans, errors, layouts = [], [], candidates(base, open_options)
    for layout in layouts:
        try:
            candidate = plan(model, layout, gpu, assume)
        except UserInputError as exc:
            errors.append(exc)  # e.g. a micro-batch that does not divide the global batch
            continue
        if candidate.memory.fits(gpu):
            plans.append(candidate)
    if errors and len(errors) == len(layouts):
        raise errors[0]  # no choice of the open options makes the given ones valid
    if not plans:
        raise UserInputError(f"no layout of {base.nodes} x {base.gpus_per_node} {gpu.name} fits "
                             f"(searched {', '.join(sorted(open_options)) or 'nothing'}); add GPUs, shorten "
                             "--seq-len or lower --global-batch-tokens")
    plans.sort(key=lambda p: (-p.estimate.tokens_per_s, p.memory.total))
    return plans[:keep]
