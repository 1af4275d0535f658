import pytest

from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from tests.data_prep.corpora import make_tokenizer, settings, write_corpus


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def manifest(tmp_path_factory, tokenizer):
    """A small dataset with several shards per split (odd sample counts)."""
    root = tmp_path_factory.mktemp("dataset")
    inputs = write_corpus(root / "in", files=3, docs_per_file=60)
    job = ShardJob(root / "ds", settings(tokenizer, inputs, seq_len=24, val_fraction=0.1, shard_bytes=1500), workers=1)
    return shard_corpus(job, show_progress=False)[0]


@pytest.fixture(scope="session")
def small_manifest(tmp_path_factory, tokenizer):
    """A second, much smaller dataset of the same tokenizer and seq-len: a source of a blend
    that runs out early."""
    root = tmp_path_factory.mktemp("small")
    inputs = write_corpus(root / "in", files=1, docs_per_file=12)
    job = ShardJob(root / "small", settings(tokenizer, inputs, seq_len=24, val_fraction=0.1), workers=1)
    return shard_corpus(job, show_progress=False)[0]
