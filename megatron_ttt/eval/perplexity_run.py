"""`mttt eval perplexity`: load the model and the validation split, evaluate, write the report."""

import argparse
import math
from pathlib import Path

from megatron_ttt.data import Manifest
from megatron_ttt.data.loader import ShardedSamples
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.perplexity import PerplexityConfig, TokenStream, check_contexts, evaluate_context
from megatron_ttt.eval.perplexity_report import write_report


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
    source = open_model_source(args.checkpoint)
    stream = _stream(args, source.config.vocab_size)
    contexts = args.context or (stream.samples.manifest.settings.seq_len,)
    check_contexts(contexts, source.config.mini_batch_size, stream.length, args.data, args.context_parallel)
    config = PerplexityConfig(contexts, args.batch_size, args.max_samples)
    with source.load(args.tensor_parallel, args.context_parallel) as loaded:
        cp_group = loaded.groups.cp if args.context_parallel > 1 else None
        results = [evaluate_context(loaded.model, stream, c, config, loaded.groups.dp, loaded.rank0, cp_group)
                   for c in contexts]
    if loaded.rank0:
        paths = write_report(results, Path(args.out), args.buckets, args.num_buckets)
        for r in results:
            print(f"context {r.context:>6}: {r.windows} windows, {r.tokens} tokens, loss {r.loss:.4f}, "
                  f"perplexity {math.exp(r.loss):.3f}")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
