import pytest

from megatron_ttt.config.sections import DataSection
from megatron_ttt.training.data import prepare_bundled
from tests.launchers.slurm_cluster import missing_reason, start_cluster


@pytest.fixture(scope="session")
def slurm():
    """A one-node SLURM cluster on this machine (installed first if missing), stopped afterwards."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def launch_cache(tmp_path_factory):
    """The bundled corpus prepared once (tokenizer of 512 pieces, seq-len 64) for the jobs."""
    path = tmp_path_factory.mktemp("cache")
    prepare_bundled(DataSection(seq_len=64, bundled_vocab_size=512), path)
    return path
