"""The model-parallel interface DeepSpeed asks for, answered from the run's process groups.

DeepSpeed (`deepspeed.initialize(..., mpu=...)`) reduces gradients and partitions ZeRO states
over `get_data_parallel_group()` and counts tensor-parallel parameters once in the gradient
norm using `get_model_parallel_*`; megatron-core names those groups tp and dp.
DeepSpeed's data-parallel group is megatron-core's data x context-parallel group (dp_cp): the
ranks of a CP group hold the same weights and each computes gradients from its part of the
sequence, so gradients are averaged over both, as megatron-core does.
"""

import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection


class MegatronMpu:
    def __init__(self, groups: ProcessGroupCollection):
        self.model_group, self.data_group = groups.tp, groups.dp_cp

    def get_model_parallel_group(self):
        return self.model_group

    def get_data_parallel_group(self):
        return self.data_group

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(self.model_group)

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.data_group)

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(self.model_group)

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.data_group)
