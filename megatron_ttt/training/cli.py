"""`mttt pretrain`."""

import argparse
import os
import sys


def _pretrain(args: argparse.Namespace) -> int:
    from megatron_ttt.config import load_config
    from megatron_ttt.config.loading import check_world_size, notes

    config = load_config(args.config, args.overrides)
    # Before the trainer (and megatron-core, DeepSpeed) is imported: a config error is one line.
    check_world_size(config, int(os.environ.get("WORLD_SIZE", 1)))
    if os.environ.get("RANK", "0") == "0":
        for note in notes(config):
            print(note, file=sys.stderr, flush=True)
    from megatron_ttt.training.trainer import pretrain

    return pretrain(config, args.resume)


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a TTT language model (default: tiny preset, bundled corpus, CPU)",
                       description="Launch with torchrun for several processes. Exit status: 0 finished, 75 stopped "
                                   "by SIGTERM/SIGUSR1/Ctrl-C after saving a checkpoint, 130 stopped at once by a "
                                   "second Ctrl-C, 3 non-finite loss, 2 bad input.")
    p.add_argument("--config", metavar="FILE.yaml", help="sections: model, parallel, optimizer, data, checkpoint, "
                                                          "logging, train (see docs/training.md)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--resume", choices=("auto", "none"), default="auto",
                   help="auto: continue from the run directory's latest checkpoint if any (default)")
    p.set_defaults(func=_pretrain)


