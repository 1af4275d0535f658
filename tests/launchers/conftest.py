import pytest

from tests.launchers import two_node_cluster
from tests.launchers.jobs import STEPS
from tests.launchers.slurm_cluster import missing_reason, start_cluster
from tests.training.runs import pretrain


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
def two_nodes():
    """Two SLURM nodes on this machine, each a network namespace with its own host name."""
    reason = missing_reason() or two_node_cluster.missing_reason()
    if reason:
        pytest.skip(f"no two-node SLURM cluster: {reason}")
    cluster = two_node_cluster.start_two_node_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, cache):
    """The test job's run under plain torchrun on one node, 2 processes, uninterrupted."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    pretrain(run, cache, STEPS, nproc=2)
    return run
