"""The training data: a manifest or a weighted blend of manifests given by the config, or the
bundled corpus prepared on first use; their shards checked against the manifests before training
starts."""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from megatron_ttt.config.loading import blend_entries
from megatron_ttt.config.sections import DataSection
from megatron_ttt.data import DataError, Manifest, Tokenizer
from megatron_ttt.data.manifest import ShardSettings, check_one_tokenizer, source_names
from megatron_ttt.data_prep.corpus import bundled_corpus
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.tokenizer_train import TokenizerTraining, train_tokenizer
from megatron_ttt.data_prep.verify import shard_problems
from megatron_ttt.parallel.objects import every_rank, is_rank0


def bundled_manifest_path(data: DataSection, cache: Path) -> Path:
    return cache / f"shards-bpe-{data.bundled_vocab_size}-L{data.seq_len}" / "manifest.json"


def prepare_bundled(data: DataSection, cache: Path) -> Path:
    """Tokenizer and shards of the bundled corpus under `cache` (reused when present)."""
    path = bundled_manifest_path(data, cache)
    if path.exists():
        return path
    inputs = tuple(str(p) for p in bundled_corpus(cache / "python-reference"))
    prefix = cache / f"tokenizer-bpe-{data.bundled_vocab_size}" / "sp"
    if not Path(f"{prefix}.model").exists():
        train_tokenizer(TokenizerTraining(inputs, str(prefix), vocab_size=data.bundled_vocab_size))
    info = Tokenizer(f"{prefix}.model").info()
    settings = ShardSettings(data.seq_len, token_dtype(info.vocab_size).name, info, inputs, "auto", "blank-line",
                             ("text",) * len(inputs), 0.05, 0, 10**9, "replace", 0.0)
    shard_corpus(ShardJob(path.parent, settings, workers=1), show_progress=False)
    return path


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on: one manifest (weight 1) or a blend's, with a short name for each."""

    manifests: list[Manifest]
    weights: list[float]
    names: list[str]

    @property
    def tokenizer_vocab(self) -> int:
        return self.manifests[0].settings.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        """The tokenizer's EOS (-1: none), which ends each packed document."""
        return self.manifests[0].settings.tokenizer.eos_id


def eod_mask_id(data: DataSection, sources: TrainingData) -> int | None:
    """The input token whose predictions data.mask_eod_loss leaves out of the loss: the
    tokenizer's EOS; None with the setting off. Checked at start-up: a tokenizer without EOS has
    nothing to mask, and training on as if it had would silently be the unmasked run."""
    if not data.mask_eod_loss:
        return None
    if sources.eos_id < 0:
        manifest = sources.manifests[0]
        raise DataError(f"data.mask_eod_loss=true leaves the prediction at each EOS out of the loss, and the "
                        f"tokenizer of {manifest.directory / 'manifest.json'} ({manifest.settings.tokenizer.path}) "
                        "has no EOS piece (eos_id -1): shard the data with a tokenizer that has one, or set "
                        "data.mask_eod_loss=false")
    return sources.eos_id


def training_data(data: DataSection, cache: Path) -> TrainingData:
    """The manifests to train on, checked against the config and each other, and their shards
    against the manifests (data.verify), before any training starts; rank 0 prepares the bundled
    corpus while the others wait."""
    sources = training_sources(data, cache)
    check_shards(sources.manifests, full=data.verify == "full")
    return sources


def training_sources(data: DataSection, cache: Path) -> TrainingData:
    """data.manifest's manifest, or data.blend's with their weights and names."""
    entries = blend_entries(data)
    if not entries:
        manifest = training_manifest(data, cache)
        return TrainingData([manifest], [1.0], source_names([manifest]))
    manifests = [load_manifest(Path(path), data.seq_len) for _, path in entries]
    check_one_tokenizer(manifests, "data.blend")
    return TrainingData(manifests, [w for w, _ in entries], source_names(manifests))


def load_manifest(path: Path, seq_len: int) -> Manifest:
    manifest = Manifest.load(path)
    if manifest.settings.seq_len != seq_len:
        raise DataError(f"{path} holds samples of seq-len {manifest.settings.seq_len}; the config asks for "
                        f"data.seq_len={seq_len}")
    return manifest


def training_manifest(data: DataSection, cache: Path) -> Manifest:
    """The manifest of data.manifest (the bundled corpus prepared first where it is "bundled")."""
    if data.manifest == "bundled":
        if dist.get_rank() == 0:
            prepare_bundled(data, cache)
        dist.barrier()
        return load_manifest(bundled_manifest_path(data, cache), data.seq_len)
    return load_manifest(Path(data.manifest), data.seq_len)


def check_shards(manifests: list[Manifest], full: bool) -> None:
    """Each shard's size checked with a stat (with `full`, its sha256 too) before training starts:
    a missing, truncated or damaged shard stops the run now, named, rather than hours in, where a
    loader worker first reads it. The processes of a node share the shards, so each node checks
    every shard once, on the storage it reads them from; every rank then raises the same error."""
    shards = [(m, e) for m in manifests for e in m.entries()]
    first, step = node_share()
    share = shards[first::step]
    mine = [(first + i * step, problem) for i, problem in
            shard_problems(share, range(len(share)) if full else (), show_progress=is_rank0())]
    if is_rank0():
        for manifest in manifests:
            if any(e.size_bytes is None for e in manifest.entries()):
                print(f"note: {manifest.directory / 'manifest.json'} records no shard sizes (written before they "
                      "were); each shard was checked to hold at least its samples' bytes, `mttt data verify` checks "
                      "every byte", file=sys.stderr, flush=True)
    if found := sorted({problem for rank in every_rank(mine) for problem in rank}):
        (position, problem), more = found[0], len(found) - 1
        manifest, entry = shards[position]
        also = f" (and {more} other shard{'s' if more > 1 else ''}: `mttt data verify` lists all)" if more else ""
        raise DataError(f"{problem}{also}; {manifest.repair_hint([entry])}")


def node_share() -> tuple[int, int]:
    """(this process's place among its node's processes, their number), from torchrun's
    environment; (0, 1) without it."""
    if "LOCAL_WORLD_SIZE" not in os.environ:
        return 0, 1
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["LOCAL_WORLD_SIZE"])

