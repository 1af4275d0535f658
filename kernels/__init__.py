"""Triton kernels for the TTT inner loop (installed as ``megatron_ttt.kernels``)."""
