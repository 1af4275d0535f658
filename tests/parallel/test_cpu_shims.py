"""The CPU shims: megatron-core's CUDA calls run on a machine without CUDA, and nothing is
touched where CUDA exists."""

import subprocess
import sys

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, get_cuda_rng_tracker, model_parallel_cuda_manual_seed

from megatron_ttt.models.config import TTTModelConfig, megatron_config

pytestmark = pytest.mark.usefixtures("single_process_parallel")


def test_cuda_calls_run_on_the_cpu():
    assert not torch.cuda.is_available()
    assert torch.cuda.current_device() == "cpu"
    torch.cuda.synchronize()
    model_parallel_cuda_manual_seed(123)
    with get_cuda_rng_tracker().fork():
        forked = torch.rand(4)
    default = torch.rand(4)
    model_parallel_cuda_manual_seed(123)
    with get_cuda_rng_tracker().fork():
        again = torch.rand(4)
    assert torch.equal(forked, again) and not torch.equal(forked, default)


def test_sequence_parallel_layer_builds_and_runs():
    config = megatron_config(TTTModelConfig(hidden_size=32, num_heads=4, num_layers=1), cpu_init=False)
    layer = ColumnParallelLinear(32, 16, config=config, init_method=config.init_method, bias=False)
    out, _ = layer(torch.randn(5, 2, 32))
    assert out.shape == (5, 2, 16) and out.device.type == "cpu"


def test_nothing_is_patched_where_cuda_exists():
    script = ("import torch; torch.cuda.is_available = lambda: True; before = torch.cuda.current_device; "
              "from megatron_ttt.parallel.cpu_shims import apply_cpu_shims; "
              "assert apply_cpu_shims() == [] and torch.cuda.current_device is before; print('untouched')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "untouched"
