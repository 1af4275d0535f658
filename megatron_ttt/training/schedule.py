"""The learning-rate schedules as functions of the step (so a resumed run needs no scheduler state).

Every schedule warms up linearly over warmup_fraction of the steps; then cosine and linear decay to
min_lr at the last step, constant stays at lr, and wsd stays at lr until its decay, the last
decay_fraction of the steps, takes it down to min_lr in its decay_shape.
"""

import dataclasses
import math

from megatron_ttt.config.sections import OptimizerSection

DECAY = {
    "linear": lambda p: 1 - p,
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1 - math.sqrt(p),
}
"""Each of the config's DECAY_SHAPES: the fraction of lr - min_lr left above min_lr at progress p (0 to 1)."""


def warmup_steps(opt: OptimizerSection, total_steps: int) -> int:
    return max(1, round(opt.warmup_fraction * total_steps))


def decay_start(opt: OptimizerSection, total_steps: int) -> int:
    """The step (from 0) where the decay to min_lr begins; total_steps: never (constant)."""
    if opt.schedule == "constant":
        return total_steps
    if opt.schedule == "wsd":
        return total_steps - round(opt.decay_fraction * total_steps)
    return warmup_steps(opt, total_steps)


def learning_rate(opt: OptimizerSection, step: int, total_steps: int) -> float:
    """Linear warm-up from 0 to lr, lr until the decay starts, then the decay's shape down to
    min_lr at the last step (step counts from 0)."""
    warm = warmup_steps(opt, total_steps)
    if step < warm:
        return opt.lr * (step + 1) / warm
    start = decay_start(opt, total_steps)
    if step < start:
        return opt.lr
    progress = min(1.0, (step - start) / max(1, total_steps - 1 - start))
    shape = DECAY[opt.decay_shape if opt.schedule == "wsd" else opt.schedule]
    return opt.min_lr + (opt.lr - opt.min_lr) * shape(progress)


SCHEDULE_KEYS = ("lr", "min_lr", "warmup_fraction", "schedule", "decay_fraction", "decay_shape")


def saved_schedule(saved_optimizer: dict) -> OptimizerSection:
    """The schedule settings of a checkpoint's optimizer section; a key its config lacks trained as
    its default (cosine, before there were other schedules)."""
    return dataclasses.replace(OptimizerSection(), **{k: saved_optimizer[k] for k in SCHEDULE_KEYS
                                                      if k in saved_optimizer})


def schedule_change(before: OptimizerSection, before_steps: int, now: OptimizerSection, now_steps: int,
                    step: int) -> str | None:
    """One line on what a resume with other schedule settings (train.steps, or the optimizer's
    SCHEDULE_KEYS) does: the schedule is a function of the step and the total, so it is re-laid
    over the new total from the resumed step on; None when nothing changed."""
    changed = [f"train.steps {before_steps} -> {now_steps}"] if before_steps != now_steps else []
    changed += [f"optimizer.{k} {getattr(before, k)} -> {getattr(now, k)}" for k in SCHEDULE_KEYS
                if getattr(before, k) != getattr(now, k)]
    if not changed:
        return None
    lr_now, lr_before = learning_rate(now, step, now_steps), learning_rate(before, step, before_steps)
    start = decay_start(now, now_steps)
    decay = (f"the decay to {now.min_lr:g} runs from step {start + 1} to step {now_steps}" if start < now_steps
             else f"then it stays at {now.lr:g} to step {now_steps}")
    return (f"the schedule changed on resume ({', '.join(changed)}): from step {step + 1} the learning rate is "
            f"{lr_now:.3g} (it would have been {lr_before:.3g}), warm-up ends at step {warmup_steps(now, now_steps)}, "
            f"{decay}")


def inner_lr_scale(opt: OptimizerSection, layer_type: str, base_lr: float, step: int, total_steps: int) -> float:
    """Multiplier of the inner base lr: TTT-MLP warms it from inner_lr_warmup_from to base_lr."""
    if layer_type != "mlp":
        return 1.0
    warm = warmup_steps(opt, total_steps)
    start = opt.inner_lr_warmup_from / base_lr
    return start + (1.0 - start) * min(1.0, (step + 1) / warm)
