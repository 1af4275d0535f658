"""Packing token streams into fixed-size samples and writing them as webdataset shards."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from megatron_ttt.data import DataError, ShardEntry
from megatron_ttt.data.manifest import SAMPLE_FIELD, sample_key
from megatron_ttt.data.tokenizer import file_sha256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def shard_pattern(directory: Path, split: str, task: int) -> str:
    """ShardWriter's %-format pattern of a task's shards (a `%` in the directory kept literal)."""
    return str(directory / split).replace("%", "%%") + f"/t{task:05d}-%06d.tar"


@dataclass
class _OpenShard:
    samples: int = 0
    documents: int = 0


@dataclass
class ShardSink:
    """One split of one task: documents in, samples of exactly `sample_tokens` out, written with
    webdataset's ShardWriter into `DIR/<split>/tTTTTT-NNNNNN.tar`.

    Every document is followed by EOS and the stream is cut every `sample_tokens` tokens, so a
    document may span samples and shards; what is left at `close()` (shorter than one sample) is
    dropped and counted.
    """

    directory: Path
    split: str
    task: int
    sample_tokens: int
    dtype: np.dtype
    vocab_size: int
    eos_id: int
    shard_bytes: int
    shards: list[ShardEntry] = field(default_factory=list)
    tokens: int = 0
    dropped_tokens: int = 0

    def __post_init__(self):
        (self.directory / self.split).mkdir(parents=True, exist_ok=True)
        pattern = shard_pattern(self.directory, self.split, self.task)
        # An integer mtime: reproducible shards, and no per-member pax header (tarfile writes one
        # for a float mtime), so every sample sits at a fixed stride.
        self._writer = wds.ShardWriter(pattern, maxcount=1 << 62, maxsize=self.shard_bytes,
                                       post=self._finished, verbose=0, encoder=False, mtime=0)
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0
        self._doc_starts: list[int] = []
        self._written = 0
        self._shard = _OpenShard()

    def add(self, token_lists: list[list[int]]) -> None:
        """Append documents (token ids without EOS)."""
        flat: list[int] = []
        for ids in token_lists:
            self._doc_starts.append(self._written + self._pending_tokens + len(flat))
            flat.extend(ids)
            flat.append(self.eos_id)
        tokens = np.asarray(flat, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise DataError(f"tokenizer produced id {tokens.max()} outside its vocabulary of {self.vocab_size} "
                            f"(task {self.task}); the .model file is inconsistent")
        self._pending.append(tokens.astype(self.dtype))
        self._pending_tokens += tokens.size
        if self._pending_tokens >= self.sample_tokens:
            self._emit()

    def _emit(self) -> None:
        stream = np.concatenate(self._pending)
        full = stream.size // self.sample_tokens * self.sample_tokens
        starts = np.asarray(self._doc_starts, dtype=np.int64)
        per_sample = np.bincount((starts[starts < self._written + full] - self._written) // self.sample_tokens,
                                 minlength=full // self.sample_tokens)
        for index, sample in enumerate(stream[:full].reshape(-1, self.sample_tokens)):
            self._write(sample, int(per_sample[index]))
        self._doc_starts = [s for s in self._doc_starts if s >= self._written]
        self._pending = [stream[full:]]
        self._pending_tokens = stream.size - full

    def _write(self, sample: np.ndarray, documents: int) -> None:
        self._writer.write({"__key__": sample_key(self.task, self.tokens // self.sample_tokens),
                            SAMPLE_FIELD: sample.tobytes()})
        self._shard.samples += 1
        self._shard.documents += documents
        self._written += self.sample_tokens
        self.tokens += self.sample_tokens

    def _finished(self, fname: str) -> None:
        path = Path(fname)
        self.shards.append(ShardEntry(path=f"{self.split}/{path.name}", samples=self._shard.samples,
                                      tokens=self._shard.samples * self.sample_tokens,
                                      documents=self._shard.documents, sha256=file_sha256(path), task=self.task,
                                      size_bytes=path.stat().st_size))
        self._shard = _OpenShard()

    def close(self) -> None:
        self.dropped_tokens = self._pending_tokens
        self._writer.close()


def remove_task_shards(directory: Path, task: int, splits: tuple[str, ...]) -> list[Path]:
    """Delete what an interrupted attempt at `task` left behind; return what was removed."""
    leftovers = [p for split in splits for p in sorted((directory / split).glob(f"t{task:05d}-*.tar"))]
    for path in leftovers:
        path.unlink()
    return leftovers


ProgressFn = Callable[[int, int], None]
"""Called with (documents, tokens) done since the last call."""
