"""`mttt convert ...` and `mttt eval logprobs`. Heavy imports (megatron-core) happen inside the
commands, so `mttt --help` and the data commands start fast."""

import argparse
from pathlib import Path

import numpy as np


def _convert(args: argparse.Namespace) -> int:
    from megatron_ttt.checkpoint.convert import hf_to_mttt, mttt_to_hf
    from megatron_ttt.parallel.setup import ParallelLayout, destroy_parallel, init_parallel

    init_parallel(ParallelLayout())
    try:
        convert = hf_to_mttt if args.direction == "hf-to-mttt" else mttt_to_hf
        diff = convert(Path(args.src), Path(args.dst))
    finally:
        destroy_parallel()
    print(f"wrote {args.dst}; self-check: log-probabilities match the source to {diff:.1e}")
    return 0


def _logprobs(args: argparse.Namespace) -> int:
    import torch

    from megatron_ttt.checkpoint.model_dir import load_model, read_model_config
    from megatron_ttt.eval.logprobs import check_token_ids, token_logprobs
    from megatron_ttt.parallel.setup import ParallelLayout, destroy_parallel, init_parallel

    init_parallel(ParallelLayout(args.tensor_parallel))
    try:
        cfg = read_model_config(Path(args.checkpoint))
        tokens = check_token_ids(np.load(args.input), cfg.vocab_size, args.input)
        model = load_model(Path(args.checkpoint))
        rank0 = torch.distributed.get_rank() == 0
        logp = token_logprobs(model, tokens, args.batch_size, show_progress=rank0)
        if rank0:
            np.save(args.output, logp.numpy().astype(np.float32))
            print(f"wrote {args.output}: float32 {tuple(logp.shape)}")
    finally:
        destroy_parallel()
    return 0


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert checkpoints (reference format <-> ours), self-checked")
    p.add_argument("direction", choices=("hf-to-mttt", "mttt-to-hf"))
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", help="must not exist; written only after the self-check passes")
    p.set_defaults(func=_convert)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    evals = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_command", metavar="WHAT",
                                                                                 required=True)
    p = evals.add_parser("logprobs", help="next-token log-probabilities of token id sequences")
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--input", required=True, metavar="IDS.npy", help="int64 [N, T] token ids")
    p.add_argument("--output", required=True, metavar="LP.npy", help="float32 [N, T-1]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tensor-parallel", type=int, default=1, help="TP size (launch with torchrun for > 1)")
    p.set_defaults(func=_logprobs)
