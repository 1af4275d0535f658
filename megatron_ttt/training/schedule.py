"""The paper's schedules as functions of the step (so a resumed run needs no scheduler state)."""

import math

from megatron_ttt.config.sections import OptimizerSection


def warmup_steps(opt: OptimizerSection, total_steps: int) -> int:
    return max(1, round(opt.warmup_fraction * total_steps))


def learning_rate(opt: OptimizerSection, step: int, total_steps: int) -> float:
    """Linear warm-up from 0 to lr, then cosine to min_lr at the last step (step counts from 0)."""
    warm = warmup_steps(opt, total_steps)
    if step < warm:
        return opt.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - 1 - warm))
    return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1 + math.cos(math.pi * progress))


def inner_lr_scale(opt: OptimizerSection, layer_type: str, base_lr: float, step: int, total_steps: int) -> float:
    """Multiplier of the inner base lr: TTT-MLP warms it from inner_lr_warmup_from to base_lr."""
    if layer_type != "mlp":
        return 1.0
    warm = warmup_steps(opt, total_steps)
    start = opt.inner_lr_warmup_from / base_lr
    return start + (1.0 - start) * min(1.0, (step + 1) / warm)
