"""SLURM launchers: `mttt launch pretrain | data-shard` render sbatch scripts from the templates
and cluster profiles of megatron_ttt.launchers (the repository's launchers/ folder) and submit them."""
