"""The training loader: a seeded global sample order, sliced per data-parallel rank, resumable.

Sample ids number the samples of a split in manifest order. Epoch e visits them in the order of
`FeistelPermutation(n, seed + e)`; the stream of positions never restarts, so a micro-batch may
straddle two epochs. Each micro-step takes the next `micro_batch_size * dp_size` positions and
rank r reads the r-th slice of them, so ranks read disjoint samples and the only state is the
number of positions consumed, which is the same on every rank. That is why a run resumes at the
exact next sample, and why it may resume with another data-parallel size or micro-batch size:
the global stream is unchanged, no sample is lost or repeated.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_ttt.data.errors import DataError
from megatron_ttt.data.manifest import Manifest
from megatron_ttt.data.permutation import FeistelPermutation
from megatron_ttt.data.shard_reader import ShardReader


@dataclass(frozen=True)
class LoaderConfig:
    micro_batch_size: int
    """Samples per rank per micro-step."""
    split: str = "train"
    seed: int = 0
    """Epoch e is shuffled with seed + e."""
    shuffle: bool = True
    """False: manifest order (validation)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 reads in the training process)."""
    verify_sha256: bool = False
    """Hash each shard when a process first opens it (costs one extra read of the data)."""


class TokenBatch(NamedTuple):
    tokens: torch.Tensor
    """[B, L] int64 inputs."""
    labels: torch.Tensor
    """[B, L] int64: tokens shifted by one."""
    sample_ids: torch.Tensor
    """[B] int64: which samples of the split these are."""


class ShardedSamples(Dataset):
    """Map-style view of one split: sample id -> tokens; shards opened lazily in each process."""

    def __init__(self, manifest: Manifest, split: str, verify_sha256: bool = False):
        if split not in manifest.shards:
            raise DataError(f"manifest {manifest.directory} has no split {split!r}")
        self.manifest, self.split, self.verify = manifest, split, verify_sha256
        self.entries = [e for e in manifest.shards[split] if e.samples > 0]
        self.starts = np.cumsum([0] + [e.samples for e in self.entries])
        self.vocab_size = manifest.settings.tokenizer.vocab_size
        self._readers: dict[int, ShardReader] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _reader(self, shard: int) -> ShardReader:
        if shard not in self._readers:
            e = self.entries[shard]
            self._readers[shard] = ShardReader(self.manifest.directory / e.path, e.samples,
                                               self.manifest.settings.sample_tokens, self.manifest.dtype,
                                               e.sha256 if self.verify else None)
        return self._readers[shard]

    def __getitem__(self, sample_id: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, sample_id, side="right")) - 1
        tokens = self._reader(shard).read(int(sample_id - self.starts[shard]))
        if tokens.max() >= self.vocab_size:
            raise DataError(f"shard {self.manifest.directory / self.entries[shard].path}: sample "
                            f"{sample_id - self.starts[shard]} holds token id {tokens.max()}, beyond the "
                            f"tokenizer's vocabulary of {self.vocab_size}")
        return tokens

    def __getitems__(self, sample_ids: list[int]) -> TokenBatch:
        samples = torch.from_numpy(np.stack([self[i] for i in sample_ids]).astype(np.int64))
        return TokenBatch(samples[:, :-1], samples[:, 1:], torch.tensor(sample_ids, dtype=torch.int64))


class _MicroBatches:
    """Sample ids of this rank's micro-batches, from a position onwards (an endless batch sampler)."""

    def __init__(self, start: int, samples: int, config: LoaderConfig, dp_rank: int, dp_size: int):
        self.start, self.samples, self.config, self.dp_rank, self.dp_size = start, samples, config, dp_rank, dp_size

    def ids(self, positions: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(positions, self.samples)
        if not self.config.shuffle:
            return within
        out = np.empty_like(within)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            out[at] = FeistelPermutation(self.samples, self.config.seed + int(epoch))(within[at])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        mb, position = self.config.micro_batch_size, self.start
        while True:
            first = position + self.dp_rank * mb
            yield self.ids(np.arange(first, first + mb)).tolist()
            position += mb * self.dp_size


def _identity(batch: TokenBatch) -> TokenBatch:
    return batch


class TokenLoader:
    """Endless (tokens, labels) micro-batches for one data-parallel rank, with exact resume."""

    def __init__(self, manifest: Manifest, config: LoaderConfig, dp_rank: int = 0, dp_size: int = 1):
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"data-parallel rank {dp_rank} is outside 0..{dp_size - 1}")
        self.manifest, self.config, self.dp_rank, self.dp_size = manifest, config, dp_rank, dp_size
        self.dataset = ShardedSamples(manifest, config.split, config.verify_sha256)
        if len(self.dataset) == 0:
            raise DataError(f"split {config.split!r} of {manifest.directory} has no samples; use more text or a "
                            "smaller --seq-len (or a larger --val-fraction for validation)")
        self.consumed_samples = 0
        """Global positions consumed by all ranks together: the whole loader state."""

    @property
    def samples_per_epoch(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> str:
        """Identifies the split's samples: the hashes of its shards in order."""
        return hashlib.sha256("".join(e.sha256 for e in self.dataset.entries).encode()).hexdigest()

    def __iter__(self) -> Iterator[TokenBatch]:
        sampler = _MicroBatches(self.consumed_samples, len(self.dataset), self.config, self.dp_rank, self.dp_size)
        workers = self.config.num_workers
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=_identity, num_workers=workers,
                            prefetch_factor=4 if workers else None, persistent_workers=False)
        for batch in loader:
            self.consumed_samples += self.config.micro_batch_size * self.dp_size
            yield batch

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.config.seed, "split": self.config.split,
                "shuffle": self.config.shuffle, "samples_per_epoch": len(self.dataset), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue after `state` (saved at any data-parallel or micro-batch size)."""
        mine = self.state_dict()
        differ = [k for k in ("seed", "split", "shuffle", "samples_per_epoch", "fingerprint") if state.get(k) != mine[k]]
        if differ:
            raise DataError(f"loader state was saved for another dataset or order ({', '.join(differ)} differ); "
                            f"resume with the manifest and seed of the saved run")
        self.consumed_samples = int(state["consumed_samples"])
