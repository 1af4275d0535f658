import pytest

from megatron_ttt.config.sections import DataSection
from megatron_ttt.training.data import prepare_bundled


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The bundled corpus prepared once (tokenizer of 512 pieces, seq-len 64) for all runs."""
    path = tmp_path_factory.mktemp("cache")
    prepare_bundled(DataSection(seq_len=64, bundled_vocab_size=512), path)
    return path
