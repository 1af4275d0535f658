"""The model-parallel interface DeepSpeed asks for, answered by megatron-core's parallel_state.

DeepSpeed (`deepspeed.initialize(..., mpu=...)`) reduces gradients and partitions ZeRO states
over `get_data_parallel_group()` and counts tensor-parallel parameters once in the gradient
norm using `get_model_parallel_*`; megatron-core names those `get_tensor_model_parallel_*`.
DeepSpeed's data-parallel group is megatron-core's data x context-parallel group (dp_cp): the
ranks of a CP group hold the same weights and each computes gradients from its part of the
sequence, so gradients are averaged over both, as megatron-core does.
"""

from megatron.core import parallel_state


class MegatronMpu:
    def get_model_parallel_rank(self) -> int:
        return parallel_state.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return parallel_state.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return parallel_state.get_tensor_model_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return parallel_state.get_data_parallel_rank(with_context_parallel=True)

    def get_data_parallel_world_size(self) -> int:
        return parallel_state.get_data_parallel_world_size(with_context_parallel=True)

    def get_data_parallel_group(self):
        return parallel_state.get_data_parallel_group(with_context_parallel=True)
