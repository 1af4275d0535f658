"""`mttt torchrun [torchrun options] COMMAND ...`: torchrun running an mttt command, whose exit
status and messages are the command's.

Plain torchrun reports any rank's exit as its own failure: a Python traceback and status 1, even
for a config error that rank 0 has already printed in one line (status 2) or a run interrupted
after saving (75). Here those statuses pass through as they are, with torchrun's logging hidden
(unless --verbose); any other failure prints torchrun's table of failed ranks and exits 1.
"""

import argparse
import logging
import sys

PASSED_THROUGH = {2: "a user error, reported by the command", 75: "interrupted after saving a checkpoint",
                  130: "interrupted"}
"""The exit statuses of mttt commands that are answers, not crashes."""


def _quiet_elastic() -> None:
    """torchrun's own lines (the OMP_NUM_THREADS notice, each rank it stops) say nothing to a user
    whose command has reported its outcome."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name == "torch.distributed.run":
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _torchrun_parser() -> argparse.ArgumentParser:
    """torchrun's own options, its script being an mttt command."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog = "mttt torchrun"
    for action in parser._actions:
        if action.dest == "training_script":
            action.metavar, action.help = "COMMAND", "the mttt command every rank runs: pretrain, eval, convert, ..."
        elif action.dest == "training_script_args":
            action.metavar, action.help = "ARGS", "the command's arguments"
    return parser


def run_torchrun(args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    launch = _torchrun_parser().parse_args(args.torchrun_args)
    command = [*(["--verbose"] if args.verbose else []), launch.training_script, *launch.training_script_args]
    launch.training_script, launch.module, launch.training_script_args = "megatron_ttt.cli", True, command
    if not args.verbose:
        _quiet_elastic()
    try:
        run(launch)
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        if first.exitcode in PASSED_THROUGH:
            return first.exitcode
        print(exc.format_msg(), file=sys.stderr)
        return 1
    except SignalException as exc:
        # torchrun has passed the signal on to the ranks and waited for them (pretrain saves).
        print(f"mttt torchrun: stopped by {exc.sigval.name}, passed on to the ranks with --shutdown-timeout "
              f"{launch.shutdown_timeout} s to finish", file=sys.stderr)
        return 128 + exc.sigval
    return 0


def add_torchrun_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("torchrun", add_help=False, prefix_chars="\0",
                       help="run an mttt command under torchrun: torchrun's options, then the command "
                            "(mttt torchrun --nproc-per-node 4 pretrain ...); its exit status is the command's")
    p.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_torchrun)
