"""`mttt launch pretrain | data-shard`: render an sbatch script and submit it (or --dry-run: print it)."""

import argparse

from megatron_ttt.launch.job import SlurmJob


def _job(args: argparse.Namespace, name: str) -> SlurmJob:
    return SlurmJob(args.job_name or name, args.nodes, args.gpus_per_node, args.partition, args.time, args.account,
                    args.grace, args.port)


def _pretrain(args: argparse.Namespace) -> int:
    from megatron_ttt.config import load_config
    from megatron_ttt.launch import pretrain
    from megatron_ttt.launch.profile import load_profile

    launch = pretrain.prepare(load_config(args.config, args.overrides), _job(args, "mttt-pretrain"),
                              load_profile(args.profile))
    if args.dry_run:
        print(launch.text, end="")
        return 0
    job_id = pretrain.submit(launch)
    print(f"submitted job {job_id}: {launch.script} (logs in {launch.script.parent / 'logs'})")
    return 0


def _data_shard(args: argparse.Namespace) -> int:
    from megatron_ttt.launch import data_shard
    from megatron_ttt.launch.profile import load_profile

    shard_args = args.shard_args[1:] if args.shard_args[:1] == ["--"] else args.shard_args
    launch = data_shard.prepare(_job(args, "mttt-data-shard"), load_profile(args.profile), args.array, shard_args)
    if args.dry_run:
        print(launch.array_text, launch.merge_text, sep="\n", end="")
        return 0
    array_id, merge_id = data_shard.submit(launch)
    print(f"submitted array job {array_id} ({args.array} tasks: {launch.array_script}) and merge job {merge_id} "
          f"(after all of them: {launch.merge_script}); logs in {launch.array_script.parent / 'logs'}")
    return 0


def _slurm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    p.add_argument("--time", help="time limit: minutes, H:M:S or D-H:M:S (default: the partition's)")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--job-name", help="job name (default mttt-pretrain / mttt-data-shard)")
    p.add_argument("--profile", default="cpu-test", metavar="NAME|FILE.yaml",
                   help="cluster profile: a bundled name (launchers/profiles/) or your copy (default cpu-test)")
    p.add_argument("--dry-run", action="store_true", help="print the script(s) instead of writing and submitting")


def add_launch_parser(sub: argparse._SubParsersAction) -> None:
    launch = sub.add_parser("launch", help="submit pretraining or data preparation to SLURM").add_subparsers(
        dest="launch_command", metavar="JOB", required=True)
    p = launch.add_parser("pretrain", help="multi-node pretraining: srun + torchrun, requeued on preemption",
                          description="Writes RUN/slurm/{config.yaml,pretrain.sbatch} and submits it; restarts "
                                      "resume from the latest checkpoint (see docs/slurm.md).")
    _slurm_options(p)
    p.add_argument("--gpus-per-node", type=int, default=1, metavar="G",
                   help="ranks per node: GPUs (requested where the profile has gpus: true) or CPU processes")
    p.add_argument("--grace", type=int, default=300, metavar="SECONDS",
                   help="USR1 (checkpoint and requeue) this long before the time limit (default 300)")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the head node (default 29500)")
    p.add_argument("--config", metavar="FILE.yaml", help="the pretraining config (see docs/training.md)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=_pretrain)

    p = launch.add_parser("data-shard", help="`mttt data shard` as a job array plus a merge-manifests job",
                          description="Array task I shards input slice I of N; a dependent job merges the slice "
                                      "manifests. Arguments after -- go to `mttt data shard`.")
    _slurm_options(p)
    p.add_argument("--array", type=int, required=True, metavar="N", help="array tasks (input slices)")
    p.add_argument("shard_args", nargs=argparse.REMAINDER, metavar="-- SHARD_ARGS",
                   help="mttt data shard arguments: --tokenizer, --output, --seq-len, --input ...")
    p.set_defaults(func=_data_shard, gpus_per_node=1, grace=300, port=29500)
