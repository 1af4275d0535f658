import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. Its switch must be set before
# triton is first imported (megatron-core imports it), so it is set here, before anything else.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.config.sections import DataSection
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import GROUPS, destroy_parallel, init_parallel
from megatron_ttt.training.data import prepare_bundled


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Every torch.empty / empty_like comes back full of NaN, so a buffer the code forgets to
    overwrite shows up in the results instead of passing by luck."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(x):
        return x.fill_(float("nan")) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


@pytest.fixture(scope="module")
def single_process_parallel():
    """A one-process gloo group with TP=1 in the test process, torn down after the module."""
    init_parallel(ParallelLayout())
    yield
    destroy_parallel()


@pytest.fixture
def groups(single_process_parallel) -> ProcessGroupCollection:
    """The one-process group's process groups, for building models; taken afresh for each test,
    since a test that runs a command in this process tears the groups down and builds them again."""
    return ProcessGroupCollection.use_mpu_process_groups(required_pgs=list(GROUPS))


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The bundled corpus prepared once (tokenizer of 512 pieces, seq-len 64) for every run and job."""
    path = tmp_path_factory.mktemp("cache")
    prepare_bundled(DataSection(seq_len=64, bundled_vocab_size=512), path)
    return path


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache):
    """The FAST run in one process with a checkpoint at every step: what runs at other layouts,
    resumed or not, and damaged checkpoints are compared with."""
    from tests.training.runs import EVERY_STEP, pretrain

    run = tmp_path_factory.mktemp("layout") / "uninterrupted"
    pretrain(run, cache, EVERY_STEP)
    return run
