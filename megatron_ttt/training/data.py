"""The training data: a manifest given by the config, or the bundled corpus prepared on first use."""

from pathlib import Path

import torch.distributed as dist

from megatron_ttt.config.sections import DataSection
from megatron_ttt.data import DataError, Manifest, Tokenizer
from megatron_ttt.data.manifest import ShardSettings
from megatron_ttt.data_prep.corpus import bundled_corpus
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.tokenizer_train import TokenizerTraining, train_tokenizer


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
                             "text", 0.05, 0, 10**9, "replace", False)
    shard_corpus(ShardJob(path.parent, settings, workers=1), show_progress=False)
    return path


def training_manifest(data: DataSection, cache: Path) -> Manifest:
    """The manifest to train on; rank 0 prepares the bundled corpus while the others wait."""
    if data.manifest == "bundled":
        if dist.get_rank() == 0:
            prepare_bundled(data, cache)
        dist.barrier()
        path = bundled_manifest_path(data, cache)
    else:
        path = Path(data.manifest)
    manifest = Manifest.load(path)
    if manifest.settings.seq_len != data.seq_len:
        raise DataError(f"{path} holds samples of seq-len {manifest.settings.seq_len}; the config asks for "
                        f"data.seq_len={data.seq_len}")
    return manifest
