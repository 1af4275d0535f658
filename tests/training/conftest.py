import pytest

from tests.training.runs import EVERY_STEP, pretrain


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache):
    """The FAST run in one process with a checkpoint at every step: what runs at other layouts,
    resumed or not, are compared with."""
    run = tmp_path_factory.mktemp("layout") / "uninterrupted"
    pretrain(run, cache, EVERY_STEP)
    return run
