"""The training loader: a seeded global sample order, sliced per data-parallel rank, resumable.

Sample ids number the samples of a split in manifest order. Epoch e visits them in the order of
`FeistelPermutation(n, seed + e)`; the stream of positions never restarts, so a micro-batch may
straddle two epochs. Each micro-step takes the next `micro_batch_size * dp_size` positions and
rank r reads the r-th slice of them, so ranks read disjoint samples and the only state is the
number of positions consumed, which is the same on every rank. That is why a run resumes at the
exact next sample, and why it may resume with another data-parallel size or micro-batch size:
the global stream is unchanged, no sample is lost or repeated.

A blend of several manifests (`data.blend`) is the same stream with one more step: the
position's source comes from `BlendSchedule` (blend.py), with the position's index in that
source's own stream, which is shuffled per epoch as above (source s > 0 with its own seeds), so
each source runs through its epochs independently and a small source is upsampled by starting
its next epoch.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_ttt.data.blend import BlendSchedule
from megatron_ttt.data.errors import DataError, ShardReadError
from megatron_ttt.data.manifest import Manifest, ShardEntry, sample_key
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
    """[B] int64: which samples of their source's split these are."""
    sources: torch.Tensor
    """[B] int64: which source of the blend each sample comes from (0 without a blend)."""


class ShardedSamples(Dataset):
    """Map-style view of one split: sample id -> tokens; shards opened lazily in each process."""

    def __init__(self, manifest: Manifest, split: str, verify_sha256: bool = False):
        if split not in manifest.shards:
            raise DataError(f"manifest {manifest.directory} has no split {split!r}")
        self.manifest, self.split, self.verify = manifest, split, verify_sha256
        self.entries = [e for e in manifest.shards[split] if e.samples > 0]
        self.starts = np.cumsum([0] + [e.samples for e in self.entries])
        self.key_starts = _key_starts(self.entries)
        self.vocab_size = manifest.settings.tokenizer.vocab_size
        self._readers: dict[int, ShardReader] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def fingerprint(self) -> str:
        """Identifies the split's samples: the hashes of its shards in order."""
        return hashlib.sha256("".join(e.sha256 for e in self.entries).encode()).hexdigest()

    def _reader(self, shard: int) -> ShardReader:
        if shard not in self._readers:
            e = self.entries[shard]
            self._readers[shard] = ShardReader(self.manifest.directory / e.path, e.samples,
                                               self.manifest.settings.sample_tokens, self.manifest.dtype,
                                               e.sha256 if self.verify else None)
        return self._readers[shard]

    def _tokens(self, shard: int, index: int) -> np.ndarray:
        tokens = self._reader(shard).read(index)
        if tokens.max() >= self.vocab_size:
            raise DataError(f"it holds token id {tokens.max()}, beyond the tokenizer's vocabulary of {self.vocab_size}")
        return tokens

    def __getitem__(self, sample_id: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, sample_id, side="right")) - 1
        index = int(sample_id - self.starts[shard])
        try:
            return self._tokens(shard, index)
        except DataError as exc:
            e = self.entries[shard]
            raise ShardReadError(f"shard {self.manifest.directory / e.path}, sample {index} (key "
                                 f"{sample_key(e.task, int(self.key_starts[shard]) + index)}): {exc}; "
                                 f"{self.manifest.repair_hint([e])}") from None


def _key_starts(entries: list[ShardEntry]) -> np.ndarray:
    """The key number of each shard's first sample: the task's samples in the split before it."""
    seen: dict[int, int] = {}
    starts = []
    for e in entries:
        starts.append(seen.get(e.task, 0))
        seen[e.task] = starts[-1] + e.samples
    return np.array(starts, dtype=np.int64)


class _Unreadable(NamedTuple):
    """A micro-batch that could not be read, handed to the training process as data: raised in a
    DataLoader worker, the error would arrive there re-raised around the worker's traceback."""

    message: str


class BlendedSamples(Dataset):
    """(source, sample id) -> tokens over the sources' datasets; batches as TokenBatch."""

    def __init__(self, datasets: list[ShardedSamples]):
        self.datasets = datasets

    def __getitems__(self, keys: list[tuple[int, int]]) -> TokenBatch | _Unreadable:
        try:
            rows = [self.datasets[s][i] for s, i in keys]
        except ShardReadError as exc:
            return _Unreadable(str(exc))
        samples = torch.from_numpy(np.stack(rows).astype(np.int64))
        sources, sample_ids = (torch.tensor(column, dtype=torch.int64) for column in zip(*keys))
        return TokenBatch(samples[:, :-1], samples[:, 1:], sample_ids, sources)


class SampleOrder:
    """Global position -> (source, sample id): the blend's schedule, then each source's epochs."""

    def __init__(self, samples: list[int], weights: list[float], seed: int, shuffle: bool):
        self.samples, self.seed, self.shuffle = samples, seed, shuffle
        self.schedule = BlendSchedule(weights)

    def source_seed(self, source: int, epoch: int) -> int:
        """Source 0 keeps the single-manifest seeds (seed + epoch), so its order is unchanged."""
        return self.seed + (source << 32) + epoch

    def __call__(self, positions: np.ndarray) -> list[tuple[int, int]]:
        sources, indices = self.schedule(positions)
        ids = np.empty_like(indices)
        for source in np.unique(sources):
            at = sources == source
            epochs, within = np.divmod(indices[at], self.samples[source])
            if not self.shuffle:
                ids[at] = within
                continue
            out = np.empty_like(within)
            for epoch in np.unique(epochs):
                here = epochs == epoch
                permutation = FeistelPermutation(self.samples[source], self.source_seed(int(source), int(epoch)))
                out[here] = permutation(within[here])
            ids[at] = out
        return list(zip(sources.tolist(), ids.tolist()))


class _MicroBatches:
    """(source, sample id) keys of this rank's micro-batches, from a position onwards (an endless
    batch sampler)."""

    def __init__(self, start: int, order: SampleOrder, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.start, self.order, self.mb, self.dp_rank, self.dp_size = start, order, micro_batch_size, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start
        while True:
            first = position + self.dp_rank * self.mb
            yield self.order(np.arange(first, first + self.mb))
            position += self.mb * self.dp_size


def _identity(batch: TokenBatch) -> TokenBatch:
    return batch


def sequence_slice(batch: TokenBatch, cp_rank: int, cp_size: int) -> TokenBatch:
    """The contiguous 1/cp_size of every sample's tokens and labels that context-parallel rank
    `cp_rank` holds (the ids and sources stay whole: they name the samples)."""
    if cp_size == 1:
        return batch
    return batch._replace(tokens=batch.tokens.chunk(cp_size, dim=1)[cp_rank],
                          labels=batch.labels.chunk(cp_size, dim=1)[cp_rank])


class TokenLoader:
    """Endless (tokens, labels) micro-batches for one data-parallel rank, with exact resume, from
    one manifest or a weighted blend of several. Under context parallelism every rank of a CP
    group reads the same samples and keeps its slice of their sequence (`context_parallel`:
    this rank's CP rank and the CP size)."""

    def __init__(self, manifests: Manifest | list[Manifest], config: LoaderConfig, dp_rank: int = 0,
                 dp_size: int = 1, weights: list[float] | None = None, context_parallel: tuple[int, int] = (0, 1)):
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"data-parallel rank {dp_rank} is outside 0..{dp_size - 1}")
        if not 0 <= context_parallel[0] < context_parallel[1]:
            raise DataError(f"context-parallel rank {context_parallel[0]} is outside 0..{context_parallel[1] - 1}")
        self.context_parallel = context_parallel
        manifests = [manifests] if isinstance(manifests, Manifest) else list(manifests)
        self.manifests, self.config, self.dp_rank, self.dp_size = manifests, config, dp_rank, dp_size
        self.weights = list(weights) if weights is not None else [1.0] * len(manifests)
        if len(self.weights) != len(manifests):
            raise DataError(f"{len(self.weights)} blend weights for {len(manifests)} manifests")
        for manifest in manifests:
            if manifest.settings.seq_len % context_parallel[1]:
                raise DataError(f"{manifest.directory}: seq-len {manifest.settings.seq_len} does not split over "
                                f"context_parallel {context_parallel[1]}")
        self.datasets = [ShardedSamples(m, config.split, config.verify_sha256) for m in manifests]
        for manifest, dataset in zip(manifests, self.datasets):
            if len(dataset) == 0:
                raise DataError(f"split {config.split!r} of {manifest.directory} has no samples; use more text or a "
                                "smaller --seq-len (or a larger --val-fraction for validation)")
        self.order = SampleOrder([len(d) for d in self.datasets], self.weights, config.seed, config.shuffle)
        self.consumed_samples = 0
        """Global positions consumed by all ranks together: the whole loader state."""

    @property
    def samples_per_epoch(self) -> int | list[int]:
        """Samples of the split; per source for a blend."""
        sizes = [len(d) for d in self.datasets]
        return sizes[0] if len(sizes) == 1 else sizes

    def per_source(self) -> np.ndarray:
        """Samples consumed from each source so far (all ranks together)."""
        return self.order.schedule.consumed(self.consumed_samples)

    def fingerprint(self) -> str:
        """Identifies the samples and the mixture: the shards' hashes in order (and, for a blend,
        the positions each source gets per period)."""
        if len(self.datasets) == 1:
            return self.datasets[0].fingerprint()
        parts = [d.fingerprint() for d in self.datasets] + [str(self.order.schedule.counts.tolist())]
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()

    def __iter__(self) -> Iterator[TokenBatch]:
        sampler = _MicroBatches(self.consumed_samples, self.order, self.config.micro_batch_size, self.dp_rank,
                                self.dp_size)
        workers = self.config.num_workers
        loader = DataLoader(BlendedSamples(self.datasets), batch_sampler=sampler, collate_fn=_identity,
                            num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False)
        for batch in loader:
            if isinstance(batch, _Unreadable):
                raise ShardReadError(batch.message)
            self.consumed_samples += self.config.micro_batch_size * self.dp_size
            yield sequence_slice(batch, *self.context_parallel)

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.config.seed, "split": self.config.split,
                "shuffle": self.config.shuffle, "samples_per_epoch": self.samples_per_epoch,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue after `state` (saved at any data-parallel or micro-batch size)."""
        mine = self.state_dict()
        differ = [k for k in ("seed", "split", "shuffle", "samples_per_epoch", "fingerprint")
                  if state.get(k) != mine[k]]
        if differ:
            raise DataError(f"loader state was saved for another dataset, blend or order ({', '.join(differ)} "
                            "differ); resume with the manifests, weights and seed of the saved run")
        self.consumed_samples = int(state["consumed_samples"])
