import pytest

from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from tests.data_prep.corpora import make_tokenizer, settings, write_corpus


@pytest.fixture(scope="session")
def manifest(tmp_path_factory):
    """A small dataset with several shards per split (odd sample counts)."""
    root = tmp_path_factory.mktemp("dataset")
    tokenizer = make_tokenizer(root / "tokenizer")
    inputs = write_corpus(root / "in", files=3, docs_per_file=60)
    job = ShardJob(root / "ds", settings(tokenizer, inputs, seq_len=24, val_fraction=0.1, shard_bytes=1500), workers=1)
    return shard_corpus(job, show_progress=False)[0]
