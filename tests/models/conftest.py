import pytest

from megatron_ttt.parallel.setup import ParallelLayout, destroy_parallel, init_parallel


@pytest.fixture(scope="module")
def single_process_parallel():
    """A one-process gloo group with TP=1, torn down after the module."""
    init_parallel(ParallelLayout())
    yield
    destroy_parallel()
