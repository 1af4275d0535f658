import pytest

from megatron_ttt.config.sections import DataSection
from megatron_ttt.training.data import prepare_bundled
from tests.training.runs import EVERY_STEP, pretrain


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The bundled corpus prepared once (tokenizer of 512 pieces, seq-len 64) for all runs."""
    path = tmp_path_factory.mktemp("cache")
    prepare_bundled(DataSection(seq_len=64, bundled_vocab_size=512), path)
    return path


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache):
    """The FAST run in one process with a checkpoint at every step: what runs at other layouts,
    resumed or not, are compared with."""
    run = tmp_path_factory.mktemp("layout") / "uninterrupted"
    pretrain(run, cache, EVERY_STEP)
    return run
