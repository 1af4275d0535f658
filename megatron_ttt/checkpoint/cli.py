"""`mttt convert ...` and `mttt checkpoint verify`. Heavy imports (megatron-core) happen inside
the command, so `mttt --help` and the data commands start fast."""

import argparse
from collections.abc import Callable
from pathlib import Path

from megatron_ttt.models.config import TTTModelConfig

Continuation = Callable[[TTTModelConfig, Path], str]
"""Given a converted model and its directory, writes how to continue pretraining it there and
returns what to print (config/continuation.py, which the config layer owns)."""


def _convert(args: argparse.Namespace, continuation: Continuation) -> int:
    from megatron_ttt.checkpoint.convert import hf_to_mttt, llama_to_mttt, mttt_to_hf, mttt_to_mttt
    from megatron_ttt.checkpoint.llama import HybridLayout
    from megatron_ttt.checkpoint.run_dir import read_model_config
    from megatron_ttt.errors import UserInputError
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import parallel_groups

    if args.tensor_parallel != 1 and args.direction != "mttt-to-mttt":
        raise UserInputError(f"--tensor-parallel {args.tensor_parallel}: only mttt-to-mttt runs at TP > 1 "
                             f"({args.direction} writes one consolidated directory in one process)")
    hybrid = (args.layer_pattern, args.attention_window, args.layer_type) != (None, None, None)
    if hybrid and args.direction != "llama-to-mttt":
        raise UserInputError("--layer-pattern, --attention-window and --layer-type apply to llama-to-mttt only")
    layout = HybridLayout(args.layer_pattern or "", args.attention_window or 0, args.layer_type or "linear")
    with parallel_groups(ParallelLayout(args.tensor_parallel)) as groups:
        convert = {"hf-to-mttt": hf_to_mttt, "mttt-to-hf": mttt_to_hf, "mttt-to-mttt": mttt_to_mttt,
                   "llama-to-mttt": lambda src, dst, groups: llama_to_mttt(src, dst, groups, layout)}[args.direction]
        diff = convert(Path(args.src), Path(args.dst), groups)
    print(f"wrote {args.dst}; self-check: log-probabilities match the source to {diff:.1e}")
    if args.direction == "llama-to-mttt":
        print(continuation(read_model_config(Path(args.dst)), Path(args.dst)))
    return 0


def add_convert_parser(sub: argparse._SubParsersAction, continuation: Continuation) -> None:
    p = sub.add_parser("convert", help="convert checkpoints (ours, reference, Llama), self-checked",
                       description="SRC of mttt-to-hf and mttt-to-mttt: a model directory, a training checkpoint "
                                   "(RUN/checkpoints/step-N, written at any TP, DP and ZeRO stage) or a run "
                                   "directory (its latest checkpoint). SRC of llama-to-mttt: a Hugging Face "
                                   "Llama directory (config.json, safetensors). See docs/checkpoints.md and "
                                   "docs/model.md.")
    p.add_argument("direction", choices=("hf-to-mttt", "mttt-to-hf", "mttt-to-mttt", "llama-to-mttt"))
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", help="must not exist; written only after the self-check passes")
    p.add_argument("--tensor-parallel", type=int, default=1,
                   help="mttt-to-mttt: load and check at this TP size (launch with torchrun for > 1)")
    p.add_argument("--layer-pattern", metavar="P",
                   help="llama-to-mttt: a symbol per layer, T TTT (from the attention it replaces), * attention, "
                        "W sliding-window attention (default: every layer *, the Llama model itself)")
    p.add_argument("--attention-window", type=int, metavar="W", help="llama-to-mttt: the W layers' window")
    p.add_argument("--layer-type", choices=("linear", "mlp"), help="llama-to-mttt: the T layers' inner model "
                                                                   "(default linear)")
    p.set_defaults(func=lambda args: _convert(args, continuation))


def _verify(args: argparse.Namespace) -> int:
    from megatron_ttt.checkpoint.verify import verify

    return verify(Path(args.path), show_progress=not args.quiet)


def add_checkpoint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="inspect checkpoints: verify their checksums")
    commands = p.add_subparsers(dest="checkpoint_command", metavar="COMMAND", required=True)
    v = commands.add_parser("verify", help="check every file of one checkpoint, or of all of a run's, against the "
                                           "checksums written with it",
                            description="Exit status: 0 every checkpoint intact (or written before checksums), "
                                        "2 one or more damaged. See docs/checkpoints.md.")
    v.add_argument("path", metavar="RUN|CKPT", help="a run directory (all its checkpoints), a training checkpoint "
                                                     "or a model directory")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_verify)
