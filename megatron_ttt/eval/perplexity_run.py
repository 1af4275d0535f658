"""`mttt eval perplexity`: load the model and the validation split, evaluate, write the report."""

import argparse
import math
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_ttt.checkpoint.model_dir import load_model, read_model_config
from megatron_ttt.checkpoint.run_dir import resolve_model_source
from megatron_ttt.data import Manifest
from megatron_ttt.data.loader import ShardedSamples
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.perplexity import PerplexityConfig, TokenStream, check_contexts, evaluate_context
from megatron_ttt.eval.perplexity_report import write_report
from megatron_ttt.parallel.setup import ModelParallel, parallel_groups


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "num_buckets", "context_parallel"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_samples is not None and args.max_samples < 1:
        raise UserInputError(f"--max-samples must be >= 1, got {args.max_samples}")


def _stream(args: argparse.Namespace, vocab_size: int) -> TokenStream:
    manifest = Manifest.load(args.data)
    data_vocab = manifest.settings.tokenizer.vocab_size
    if data_vocab > vocab_size:
        raise UserInputError(f"{args.data} was tokenized with a vocabulary of {data_vocab}, larger than the "
                             f"model's {vocab_size} in {args.checkpoint}: they do not belong together")
    return TokenStream(ShardedSamples(manifest, "val"))


def run_perplexity(args: argparse.Namespace) -> int:
    _check_args(args)
    checkpoint = resolve_model_source(Path(args.checkpoint))
    with parallel_groups(ModelParallel(args.tensor_parallel, context_parallel=args.context_parallel)):
        cfg = read_model_config(checkpoint)
        stream = _stream(args, cfg.vocab_size)
        contexts = args.context or (stream.samples.manifest.settings.seq_len,)
        check_contexts(contexts, cfg.mini_batch_size, stream.length, args.data, args.context_parallel)
        config = PerplexityConfig(contexts, args.batch_size, args.max_samples)
        model = load_model(checkpoint)
        rank0 = torch.distributed.get_rank() == 0
        dp_group = parallel_state.get_data_parallel_group()
        cp_group = parallel_state.get_context_parallel_group() if args.context_parallel > 1 else None
        results = [evaluate_context(model, stream, c, config, dp_group, rank0, cp_group) for c in contexts]
        if rank0:
            paths = write_report(results, Path(args.out), args.buckets, args.num_buckets)
            for r in results:
                print(f"context {r.context:>6}: {r.windows} windows, {r.tokens} tokens, loss {r.loss:.4f}, "
                      f"perplexity {math.exp(r.loss):.3f}")
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
