"""Small corpora and a tokenizer for the data tests, generated on the spot."""

import json
from pathlib import Path

from megatron_ttt.data import Manifest, Tokenizer
from megatron_ttt.data.manifest import ShardSettings
from megatron_ttt.data_prep.cli import VAL_FRACTION_DEFAULT
from megatron_ttt.data_prep.corpus import bundled_corpus
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents
from megatron_ttt.data_prep.tokenizer_train import TokenizerTraining, train_tokenizer

WORDS = "the model learns at test time by a gradient step on its hidden state every mini batch".split()


def make_tokenizer(directory: Path) -> Tokenizer:
    inputs = tuple(str(p) for p in bundled_corpus(directory / "corpus"))
    return train_tokenizer(TokenizerTraining(inputs, str(directory / "sp"), vocab_size=600)).tokenizer


def documents(count: int, seed: int, long_every: int = 0) -> list[str]:
    """Documents of varied length; every `long_every`-th one spans many samples."""
    docs = []
    for i in range(count):
        n = 5 + (i * 37 + seed * 11) % 60
        if long_every and i % long_every == long_every - 1:
            n = 3000
        docs.append(" ".join(WORDS[(i + j * seed) % len(WORDS)] for j in range(n)) + f" {i}.")
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def write_corpus(directory: Path, files: int = 3, docs_per_file: int = 40) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_jsonl(directory / f"part-{i}.jsonl", documents(docs_per_file, seed=i + 1, long_every=17))
            for i in range(files)]


def settings(tokenizer: Tokenizer, inputs: list[Path], seq_len: int = 64, **overrides) -> ShardSettings:
    info = tokenizer.info()
    base = dict(seq_len=seq_len, dtype=token_dtype(info.vocab_size).name, tokenizer=info,
                inputs=tuple(str(p) for p in inputs), input_format="auto", text_docs="blank-line",
                text_fields=("text",) * len(inputs), val_fraction=VAL_FRACTION_DEFAULT, seed=0, shard_bytes=10**9, bad_utf8="replace", skip_bad=0.0)
    return ShardSettings(**(base | overrides))


def shard(tmp_path: Path, name: str, tokenizer: Tokenizer, inputs: list[Path], workers: int = 1,
          **overrides) -> Manifest:
    job = ShardJob(tmp_path / name, settings(tokenizer, inputs, **overrides), workers)
    return shard_corpus(job, show_progress=False)[0]


def read(path: Path, **options) -> tuple[list[str], SourceStats]:
    """The documents of one input (SourceOptions from keywords) and their statistics."""
    stats = SourceStats()
    return list(iter_documents(path, SourceOptions(**options), stats)), stats
