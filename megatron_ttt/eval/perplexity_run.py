"""`mttt eval perplexity`: load the model and the validation split, evaluate, write the report."""

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from megatron_ttt.data import Manifest
from megatron_ttt.data.manifest import check_one_tokenizer, source_names
from megatron_ttt.data.loader import ShardedSamples
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.perplexity import PerplexityConfig, TokenStream, check_contexts, evaluate_context
from megatron_ttt.eval.perplexity_report import summary_rows, write_report


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "num_buckets", "context_parallel"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_samples is not None and args.max_samples < 1:
        raise UserInputError(f"--max-samples must be >= 1, got {args.max_samples}")


@dataclass(frozen=True)
class Source:
    name: str
    weight: float
    stream: TokenStream
    where: str


def _sources(args: argparse.Namespace, vocab_size: int) -> list[Source]:
    """Each --data manifest's validation split, with its --weights share (equal by default)."""
    weights = args.weights or [1.0] * len(args.data)
    if len(weights) != len(args.data) or min(weights) <= 0:
        raise UserInputError(f"--weights {' '.join(map(str, weights))}: give one positive weight per --data manifest "
                             f"({len(args.data)})")
    manifests = [Manifest.load(path) for path in args.data]
    check_one_tokenizer(manifests, "--data")
    data_vocab = manifests[0].settings.tokenizer.vocab_size
    if data_vocab > vocab_size:
        raise UserInputError(f"{args.data[0]} was tokenized with a vocabulary of {data_vocab}, larger than the "
                             f"model's {vocab_size} in {args.checkpoint}: they do not belong together")
    total = sum(weights)
    return [Source(name, weight / total, TokenStream(ShardedSamples(manifest, "val")), path)
            for name, weight, manifest, path in zip(source_names(manifests), weights, manifests, args.data)]


def run_perplexity(args: argparse.Namespace) -> int:
    _check_args(args)
    source = open_model_source(args.checkpoint)
    sources = _sources(args, source.config.vocab_size)
    contexts = args.context or (sources[0].stream.samples.manifest.settings.seq_len,)
    for s in sources:
        check_contexts(contexts, source.config.mini_batch_size, s.stream.length, s.where, args.context_parallel)
    config = PerplexityConfig(contexts, args.batch_size, args.max_samples)
    with source.load(args.tensor_parallel, args.context_parallel) as loaded:
        cp_group = loaded.groups.cp if args.context_parallel > 1 else None
        results = [replace(evaluate_context(loaded.model, s.stream, c, config, loaded.groups.dp, loaded.rank0,
                                            cp_group), source=s.name)
                   for s in sources for c in contexts]
    if loaded.rank0:
        weights = {s.name: s.weight for s in sources}
        paths = write_report(results, weights, Path(args.out), args.buckets, args.num_buckets)
        for row in summary_rows(results, weights):
            print(f"{row['source']:>12} context {row['context']:>6}: {row['windows']} windows, {row['tokens']} "
                  f"tokens, loss {row['loss']:.4f}, perplexity {row['perplexity']:.3f}")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
