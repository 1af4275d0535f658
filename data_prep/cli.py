"""`mttt data ...`: train-tokenizer, shard, merge-manifests, verify."""

import argparse
import os
from pathlib import Path

from megatron_ttt.data import DataError, Manifest, Tokenizer
from megatron_ttt.data.manifest import ShardSettings
from megatron_ttt.data_prep.corpus import bundled_corpus, default_cache_dir
from megatron_ttt.data_prep.merge import merge_manifests, slice_manifests
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.report import print_shard_report
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.sources import BAD_UTF8, FORMATS, TEXT_DOCS, SourceOptions, expand_inputs
from megatron_ttt.data_prep.tokenizer_train import TokenizerTraining, train_tokenizer
from megatron_ttt.data_prep.verify import verify_shards


VAL_FRACTION_DEFAULT = 0.01
"""As Megatron-LM's usual 969,30,1 split gives: enough for a stable validation loss on a real
corpus, little taken from training."""
SKIP_BAD_DEFAULT = 0.01
"""What a bare --skip-bad allows: the odd damaged record, never a file of the wrong shape."""


def _inputs(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The input files (a save_to_disk directory expanded to its .arrow files) and, per file, the
    field or column holding its text: one --text-column for every input, or one per --input."""
    paths = [Path(p) for p in args.input or bundled_corpus(default_cache_dir() / "python-reference")]
    columns = args.json_field
    if len(columns) not in (1, len(paths)):
        raise DataError(f"--text-column names {len(columns)} fields for {len(paths)} inputs: give one for every "
                        "input, or one per --input in the same order")
    if len(columns) == 1:
        columns = columns * len(paths)
    pairs = [(str(file.resolve()), column) for path, column in zip(paths, columns) for file in expand_inputs([path])]
    return tuple(p for p, _ in pairs), tuple(c for _, c in pairs)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", metavar="FILE",
                   help="text or JSON Lines files, optionally .gz/.zst; Parquet or Arrow files; directories written "
                        "by datasets' save_to_disk (default: the bundled Python reference)")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="auto: Parquet for .parquet, Arrow for .arrow, JSON Lines for .jsonl/.json/.ndjson, else text")
    p.add_argument("--text-docs", choices=TEXT_DOCS, default="blank-line",
                   help="plain text: one document per blank-line-separated block (default) or per line")
    p.add_argument("--json-field", "--text-column", nargs="+", default=["text"], metavar="NAME",
                   help="the JSON field, or the Parquet/Arrow column, holding the text: one for every input, or one "
                        "per --input in its order (default: text)")
    p.add_argument("--bad-utf8", choices=BAD_UTF8, default="replace", help="invalid UTF-8: replace (counted) or skip")
    p.add_argument("--skip-bad", nargs="?", type=float, const=SKIP_BAD_DEFAULT, default=0.0, metavar="FRACTION",
                   help="skip and count malformed records, corrupt Parquet row groups and truncated tails "
                        "(of compressed or Arrow files) instead of failing, but fail when more than FRACTION of a "
                        f"file's records are skipped (default {SKIP_BAD_DEFAULT:g}; 1: no limit)")


def _options(args: argparse.Namespace) -> SourceOptions:
    if not 0.0 <= args.skip_bad <= 1.0:
        raise DataError(f"--skip-bad {args.skip_bad:g}: give a fraction of each file's records in [0, 1]")
    return SourceOptions(args.format, args.text_docs, "text", args.bad_utf8, args.skip_bad)


def _train_tokenizer(args: argparse.Namespace) -> int:
    inputs, columns = _inputs(args)
    config = TokenizerTraining(inputs, args.output, args.vocab_size, args.model_type, args.max_sentences,
                               text_fields=columns)
    trained = train_tokenizer(config, _options(args))
    info = trained.tokenizer.info()
    print(f"read\n{trained.summary()}")
    print(f"wrote {info.path} (vocab {info.vocab_size}, unk/bos/eos/pad = {info.unk_id}/{info.bos_id}/"
          f"{info.eos_id}/{info.pad_id}, sha256 {info.sha256[:12]})")
    return 0


def _slice(args: argparse.Namespace) -> tuple[int, int]:
    """--task-index/--num-tasks, else the SLURM array task this process runs in, else the whole job."""
    env = os.environ
    index = args.task_index
    if index is None:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)) if "SLURM_ARRAY_TASK_ID" in env else 0
    count = args.num_tasks or int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    return index, count


def _shard(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer(args.tokenizer)
    info = tokenizer.info()
    info = type(info)(**{**info.__dict__, "path": str(Path(info.path).resolve())})
    inputs, columns = _inputs(args)
    settings = ShardSettings(args.seq_len, token_dtype(info.vocab_size).name, info, inputs, args.format,
                             args.text_docs, columns, args.val_fraction, args.seed,
                             int(args.shard_size_mb * 1e6), args.bad_utf8, _options(args).skip_bad)
    index, count = _slice(args)
    manifest, run = shard_corpus(ShardJob(Path(args.output), settings, args.workers, index, count),
                                 show_progress=not args.quiet)
    print_shard_report(manifest, run)
    return 0


def _merge(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    manifest = merge_manifests(args.slices or slice_manifests(directory), directory / "manifest.json")
    print_shard_report(manifest, {"manifest": str(directory / "manifest.json")})
    return 0


def _verify(args: argparse.Namespace) -> int:
    verify_shards(Manifest.load(args.manifest), show_progress=True)
    print(f"{args.manifest}: every shard matches its size and sha256")
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="tokenizers and sharded datasets").add_subparsers(dest="data_command",
                                                                                           metavar="STEP", required=True)
    p = data.add_parser("train-tokenizer", help="train a sentencepiece tokenizer")
    _source_args(p)
    p.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.model, .vocab and .json")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="lines sampled from a larger corpus")
    p.set_defaults(func=_train_tokenizer)

    p = data.add_parser("shard", help="tokenize, pack and write webdataset shards with a manifest (resumable)")
    _source_args(p)
    p.add_argument("--tokenizer", required=True, metavar="PREFIX.model")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--seq-len", type=int, required=True, help="samples hold seq-len + 1 tokens")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--shard-size-mb", type=float, default=1000.0, help="token bytes per shard (default 1000)")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION_DEFAULT,
                   help=f"documents held out for validation, drawn at random (default {VAL_FRACTION_DEFAULT:g}; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the validation split")
    p.add_argument("--task-index", type=int, help="this slice of the inputs (default: $SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--num-tasks", type=int, help="number of slices (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_shard)

    p = data.add_parser("merge-manifests", help="join the slice manifests of DIR into DIR/manifest.json")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--slices", nargs="+", type=Path, help="slice manifests (default: DIR/manifests/slice-*.json)")
    p.set_defaults(func=_merge)

    p = data.add_parser("verify", help="check every shard of a manifest against its size and sha256")
    p.add_argument("manifest", metavar="MANIFEST")
    p.set_defaults(func=_verify)

