"""The ``mttt`` command: subcommands wired to one function each."""

import argparse
import os
import platform
import sys
import time

from megatron_ttt import __version__
from megatron_ttt.console import quiet_libraries
from megatron_ttt.errors import UserInputError
from megatron_ttt.checkpoint.cli import add_checkpoint_parser, add_convert_parser
from megatron_ttt.config.continuation import continue_pretraining
from megatron_ttt.data_prep.cli import add_data_parser
from megatron_ttt.eval.cli import add_eval_parser, add_generate_parser
from megatron_ttt.launch.cli import add_launch_parser
from megatron_ttt.launch.torchrun import add_torchrun_parser
from megatron_ttt.planning.cli import add_plan_parser
from megatron_ttt.training.cli import add_pretrain_parser


def _version(args: argparse.Namespace) -> int:
    import torch

    print(f"megatron-ttt {__version__} (torch {torch.__version__}, python {platform.python_version()})")
    return 0


def _copy_gbps() -> float:
    from megatron_ttt.planning.machine import copy_gbps

    return copy_gbps()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mttt", description="Pretrain TTT language models.")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' warnings (megatron-core, DeepSpeed, torch), hidden by default")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the package and torch versions").set_defaults(func=_version)
    add_data_parser(sub)
    add_pretrain_parser(sub)
    add_convert_parser(sub, continue_pretraining)
    add_checkpoint_parser(sub)
    add_eval_parser(sub)
    add_generate_parser(sub, _copy_gbps)
    add_launch_parser(sub)
    add_torchrun_parser(sub)
    add_plan_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if not args.verbose:
        quiet_libraries()
    try:
        return args.func(args)
    except UserInputError as exc:
        report(f"mttt {args.command}", exc)
        return 2
    except KeyboardInterrupt:
        print(f"mttt {args.command}: interrupted", file=sys.stderr)
        return 130


RANK_0_FIRST_S = 5.0
"""How long the other ranks hold back their exit after an error every rank finds: torchrun stops
every rank at the first exit, which must be rank 0's, after it has printed the error."""


def report(command: str, exc: UserInputError) -> None:
    """The error in one line, once per job: under torchrun, by rank 0 alone where every rank met
    it alike, else by each rank that met it."""
    rank, world = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
    if exc.every_rank_finds_it and rank != "0":
        time.sleep(RANK_0_FIRST_S)
        return
    where = f" on rank {rank}" if world > 1 and not exc.every_rank_finds_it else ""
    print(f"{command}: error{where}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
