"""Process groups and the pieces of Megatron's parallel wiring that megatron-core leaves to the trainer."""
