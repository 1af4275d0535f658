"""The kernels compile for real GPU architectures (no GPU needed), and a shortfall names itself.

The test process interprets the kernels (tests/conftest.py), so compiling runs in a fresh one.
"""

import json
import os
import subprocess
import sys

import pytest

PROGRAM = """
import json, torch
from triton.backends.compiler import GPUTarget
from megatron_ttt.kernels.resources import shared_memory_shortfall, shared_memory
from megatron_ttt.kernels.ttt_linear.kernels import ttt_linear_fwd_kernel
meta = {"D": 16, "BL": 16, "G": 2, "PREC": "ieee"}
target = GPUTarget("cuda", 90, 32)
need = shared_memory(ttt_linear_fwd_kernel, torch.float32, tuple(sorted(meta.items())), target)
print(json.dumps({"need": need,
                  "fits": shared_memory_shortfall([ttt_linear_fwd_kernel], torch.float32, meta, target, 232448),
                  "short": shared_memory_shortfall([ttt_linear_fwd_kernel], torch.float32, meta, target, need - 1)}))
"""


@pytest.mark.slow
def test_linear_forward_compiles_for_hopper_and_reports_its_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < result["need"] <= 232448
    assert result["fits"] is None
    assert result["short"] == (f"ttt_linear_fwd_kernel needs {result['need']} bytes of shared memory; "
                               f"the GPU has {result['need'] - 1} per block")
