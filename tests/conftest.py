import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. Its switch must be set before
# triton is first imported (megatron-core imports it), so it is set here, before anything else.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from megatron_ttt.parallel.setup import ModelParallel, destroy_parallel, init_parallel


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
    init_parallel(ModelParallel())
    yield
    destroy_parallel()
