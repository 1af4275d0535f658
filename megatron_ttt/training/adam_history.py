"""Bitwise exact resume with DeepSpeed's FusedAdam on the CPU.

Its CPU kernel keeps beta1^t and beta2^t in one process-wide object: the first call computes them
with pow(), every later step multiplies them by beta once more. A process resumed after step s
starts that chain with pow(beta, s + 1), which from about step 5 on is 1 ulp away from the
product the uninterrupted process carries, and so is every update after it. Replaying the chain
(steps 1..s on a one-element scratch tensor) gives the resumed process the same bias correction.
DeepSpeed's CUDA FusedAdam computes it from the step at every call and needs nothing.
"""

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.adam import FusedAdam


def replay_bias_correction(base_optimizer, steps: int) -> None:
    """Bring the CPU kernel's running beta powers to where `steps` optimizer steps leave them."""
    if not isinstance(base_optimizer, FusedAdam) or get_accelerator().device_name() != "cpu":
        return
    # Every group has the same betas and eps; under ZeRO-3 a rank's groups may hold no parameters.
    group = base_optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    scratch = [[torch.zeros(1)] for _ in range(4)]  # gradient, parameter, exp_avg, exp_avg_sq
    for step in range(1, steps + 1):
        base_optimizer.multi_tensor_adam(1, base_optimizer._dummy_overflow_buf, scratch, 0.0, beta1, beta2,
                                         group["eps"], step, base_optimizer.adam_w_mode, 1, 0.0)
