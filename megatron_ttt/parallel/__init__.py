"""Process groups (`init_parallel`, `parallel_groups`), the CPU shims and DeepSpeed's view of megatron-core's groups."""
