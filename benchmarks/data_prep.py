"""Throughput of data preparation and loading on the CPU, against raw sentencepiece.

On the same text (the bundled Python reference, repeated to --megabytes and split into
--files inputs): raw `SentencePieceProcessor.Encode` over the documents already in memory (one
thread, batches of the size `mttt data shard` uses), then `mttt data shard` with 1 and 2
workers (reading, tokenizing, packing, writing and hashing shards), then with 1 worker on the same
documents as Parquet files (one per input), then the loader reading the shards back, alone and
as a 50/50 blend of the JSON Lines and the Parquet shards (the same number of samples). Token rates
count the tokenizer's ids (EOS excluded) so every row counts the same tokens; each row is the best
of --repeats.

    python benchmarks/data_prep.py
    python benchmarks/data_prep.py --megabytes 8 --json rows.json
"""

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_ttt.data import Manifest, Tokenizer
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.data_prep.corpus import bundled_corpus
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents
from megatron_ttt.data_prep.task import ENCODE_BATCH_DOCS
from megatron_ttt.data_prep.tokenizer_train import TokenizerTraining, train_tokenizer
from megatron_ttt.data.manifest import ShardSettings


def make_inputs(directory: Path, megabytes: float, files: int) -> list[Path]:
    topics = [p.read_text() for p in bundled_corpus(directory / "bundled")]
    text = "".join(topics)
    copies = max(1, round(megabytes * 1e6 / len(text.encode())))
    paths = [directory / f"input-{i}.jsonl" for i in range(files)]
    for i, path in enumerate(paths):
        path.write_text(text * len(range(i, copies, files)))
    return paths


def parquet_copies(inputs: list[Path]) -> list[Path]:
    """The documents of each input as a Parquet file (pyarrow's defaults: snappy, one row group
    of up to 1Mi rows), so the Parquet run has the same tasks and tokens."""
    paths = [path.with_suffix(".parquet") for path in inputs]
    for source, path in zip(inputs, paths):
        pq.write_table(pa.table({"text": list(iter_documents(source, SourceOptions(), SourceStats()))}), path)
    return paths


def shard_tokens(manifest: Manifest) -> int:
    """The tokenizer's ids in the manifest: samples and dropped tails, less one EOS per document."""
    return sum(sum(t.tokens.values()) + sum(t.dropped_tokens.values()) - t.documents for t in manifest.tasks)


def best_of(repeats: int, fn) -> tuple[float, object]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        runs.append((time.perf_counter() - start, result))
    return min(runs, key=lambda r: r[0])


def raw_encode(tokenizer: Tokenizer, docs: list[str]) -> int:
    it, tokens = iter(docs), 0
    while batch := list(itertools.islice(it, ENCODE_BATCH_DOCS)):
        tokens += sum(map(len, tokenizer.encode(batch)))
    return tokens


def shard(directory: Path, settings: ShardSettings, workers: int) -> Manifest:
    out = Path(tempfile.mkdtemp(dir=directory))
    return shard_corpus(ShardJob(out, settings, workers), show_progress=False)[0]


def read_all(manifests: list[Manifest], workers: int, micro_batch: int, weights: list[float] | None = None) -> int:
    """One epoch's worth of the first manifest's samples, from it alone or from a blend."""
    loader = TokenLoader(manifests, LoaderConfig(micro_batch_size=micro_batch, num_workers=workers), weights=weights)
    it, steps = iter(loader), manifests[0].samples("train") // micro_batch
    return sum(next(it).tokens.numel() for _ in range(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, args.megabytes, args.files)
        tokenizer = train_tokenizer(TokenizerTraining(tuple(map(str, bundled_corpus(root / "bundled"))),
                                                      str(root / "sp"), vocab_size=args.vocab_size)).tokenizer
        docs = [d for p in inputs for d in iter_documents(p, SourceOptions(), SourceStats())]
        info = tokenizer.info()
        settings = ShardSettings(args.seq_len, token_dtype(info.vocab_size).name, info, tuple(map(str, inputs)),
                                 "auto", "blank-line", ("text",) * len(inputs), 0.0, 0, 10**9, "replace", 0.0)
        rows = []
        seconds, tokens = best_of(args.repeats, lambda: raw_encode(tokenizer, docs))
        rows.append({"case": "sentencepiece Encode (in memory, 1 thread)", "seconds": seconds, "tokens": tokens})
        for workers in (1, 2):
            seconds, m = best_of(args.repeats, lambda: shard(root, settings, workers))
            rows.append({"case": f"mttt data shard, {workers} worker{'s' * (workers > 1)}", "seconds": seconds,
                         "tokens": shard_tokens(m)})
        parquet = dataclasses.replace(settings, inputs=tuple(map(str, parquet_copies(inputs))))
        seconds, from_parquet = best_of(args.repeats, lambda: shard(root, parquet, 1))
        rows.append({"case": "mttt data shard, Parquet, 1 worker", "seconds": seconds,
                     "tokens": shard_tokens(from_parquet)})
        for workers, micro_batch in ((0, 16), (2, 16), (2, 64)):
            seconds, tokens = best_of(args.repeats, lambda: read_all([m], workers, micro_batch))
            rows.append({"case": f"loader read, {workers} workers, micro-batch {micro_batch}", "seconds": seconds,
                         "tokens": tokens})
        for workers in (0, 2):
            seconds, tokens = best_of(args.repeats, lambda: read_all([m, from_parquet], workers, 16, [0.5, 0.5]))
            rows.append({"case": f"loader read, blend of 2, {workers} workers, micro-batch 16",
                         "seconds": seconds, "tokens": tokens})
    base = rows[0]["tokens"] / rows[0]["seconds"]
    print(f"{args.megabytes:g} MB of text in {args.files} files, vocab {args.vocab_size}, seq-len {args.seq_len}")
    print(f"{'case':<50} {'tokens':>11} {'seconds':>8} {'tokens/s':>12} {'vs encode':>9}")
    for row in rows:
        row["tokens_per_second"] = row["tokens"] / row["seconds"]
        print(f"{row['case']:<50} {row['tokens']:>11,} {row['seconds']:>8.2f} {row['tokens_per_second']:>12,.0f} "
              f"{row['tokens_per_second'] / base:>8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
