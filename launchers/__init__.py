"""SLURM launchers (installed as ``megatron_ttt.launchers``)."""
