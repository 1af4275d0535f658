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


SCHEDULE_KEYS = ("lr", "min_lr", "warmup_fraction")


def schedule_change(before: OptimizerSection, before_steps: int, now: OptimizerSection, now_steps: int,
                    step: int) -> str | None:
    """One line on what a resume with other schedule settings (train.steps, or the optimizer's
    lr, min_lr, warmup_fraction) does: the schedule is a function of the step and the total, so
    it is re-laid over the new total from the resumed step on; None when nothing changed."""
    changed = [f"train.steps {before_steps} -> {now_steps}"] if before_steps != now_steps else []
    changed += [f"optimizer.{k} {getattr(before, k)} -> {getattr(now, k)}" for k in SCHEDULE_KEYS
                if getattr(before, k) != getattr(now, k)]
    if not changed:
        return None
    lr_now, lr_before = learning_rate(now, step, now_steps), learning_rate(before, step, before_steps)
    return (f"the schedule changed on resume ({', '.join(changed)}): from step {step + 1} the learning rate is "
            f"{lr_now:.3g} (it would have been {lr_before:.3g}), warm-up ends at step {warmup_steps(now, now_steps)}, "
            f"the decay reaches {now.min_lr:g} at step {now_steps}")


def inner_lr_scale(opt: OptimizerSection, layer_type: str, base_lr: float, step: int, total_steps: int) -> float:
    """Multiplier of the inner base lr: TTT-MLP warms it from inner_lr_warmup_from to base_lr."""
    if layer_type != "mlp":
        return 1.0
    warm = warmup_steps(opt, total_steps)
    start = opt.inner_lr_warmup_from / base_lr
    return start + (1.0 - start) * min(1.0, (step + 1) / warm)
