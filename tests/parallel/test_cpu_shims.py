"""The CPU shims: megatron-core's CUDA calls run on a machine without CUDA, and nothing is
touched where CUDA exists; megatron-core's sequence-parallel linear layers run on two gloo
processes."""

import subprocess
import sys

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, get_cuda_rng_tracker,
                                           model_parallel_cuda_manual_seed)

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.distributed import run_distributed

T, B, D, F = 6, 2, 32, 16
"""Sequence, batch, hidden and column-parallel output sizes of the sequence-parallel test."""


def test_cuda_calls_run_on_the_cpu(single_process_parallel):
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


def sequence_parallel_linears(rank: int, world: int, store) -> dict:
    """On each of the TP=2 ranks: its [T/2,B,D] slice of one full input through a sequence-parallel
    ColumnParallelLinear (D -> F) and RowParallelLinear (F -> D), then backward from its slice of
    one full upstream gradient. Returns its inputs, weight shards, outputs and gradients."""
    init_parallel(ParallelLayout(tensor_parallel=world, sequence_parallel=True), store=store)
    assert parallel_state.get_tensor_model_parallel_world_size() == world
    config = megatron_config(TTTModelConfig(hidden_size=D, num_heads=4, num_layers=1, intermediate_size=F),
                             tensor_parallel=world, sequence_parallel=True)
    assert config.sequence_parallel and config.tensor_model_parallel_size == world
    column = ColumnParallelLinear(D, F, config=config, init_method=config.init_method, bias=False,
                                  gather_output=False)
    row = RowParallelLinear(F, D, config=config, init_method=config.init_method, bias=False,
                            input_is_parallel=True, skip_bias_add=True)
    with torch.no_grad():  # the layers only allocate: each rank draws its own shards
        mine = torch.Generator().manual_seed(100 + rank)
        column.weight.normal_(0.0, 0.02, generator=mine)
        row.weight.normal_(0.0, 0.02, generator=mine)
    g = torch.Generator().manual_seed(7)  # the same full tensors on every rank; each keeps its slice
    full_x, full_upstream = torch.randn(T, B, D, generator=g), torch.randn(T, B, D, generator=g)
    local = slice(rank * T // world, (rank + 1) * T // world)
    x = full_x[local].clone().requires_grad_()
    hidden, _ = column(x)
    hidden.retain_grad()
    out, _ = row(hidden)
    (out * full_upstream[local]).sum().backward()
    result = dict(x=x.detach(), full_x=full_x, full_upstream=full_upstream, hidden=hidden.detach(),
                  out=out.detach(), column_weight=column.weight.detach(), row_weight=row.weight.detach(),
                  x_grad=x.grad, column_grad=column.weight.grad, row_grad=row.weight.grad)
    destroy_parallel()
    return result


def test_sequence_parallel_linears_on_two_processes():
    """Sequence parallel at TP=2: the column-parallel layer all-gathers each rank's [T/2,B,D] over
    the sequence, so each rank's [T,B,F/2] output is its columns of one dense matmul of the whole
    input with the concatenated weight shards; the row-parallel layer reduce-scatters back to each
    rank's [T/2,B,D] slice of the dense product. The backward is the dense one's, sharded alike."""
    ranks = run_distributed(2, sequence_parallel_linears)
    full_x = ranks[0]["full_x"].double().requires_grad_()
    assert torch.equal(ranks[0]["full_x"], ranks[1]["full_x"])
    assert torch.equal(torch.cat([r["x"] for r in ranks]), ranks[0]["full_x"])  # each rank held half the sequence
    column_weight = torch.cat([r["column_weight"] for r in ranks], dim=0).double().requires_grad_()  # [F, D]
    row_weight = torch.cat([r["row_weight"] for r in ranks], dim=1).double().requires_grad_()  # [D, F]
    assert column_weight.shape == (F, D) and row_weight.shape == (D, F)
    assert not torch.equal(ranks[0]["column_weight"], ranks[1]["column_weight"])  # distinct shards
    hidden = full_x @ column_weight.T
    out = hidden @ row_weight.T
    (out * ranks[0]["full_upstream"].double()).sum().backward()

    close = dict(rtol=1e-5, atol=1e-5)
    half, cols = T // 2, F // 2
    for rank, r in enumerate(ranks):
        seq, col = slice(rank * half, (rank + 1) * half), slice(rank * cols, (rank + 1) * cols)
        assert r["x"].shape == (half, B, D)
        assert r["hidden"].shape == (T, B, cols), "the column-parallel input was not gathered over the sequence"
        torch.testing.assert_close(r["hidden"].double(), hidden[..., col].detach(), **close)
        assert r["out"].shape == (half, B, D), "the row-parallel output was not scattered over the sequence"
        torch.testing.assert_close(r["out"].double(), out[seq].detach(), **close)
        torch.testing.assert_close(r["x_grad"].double(), full_x.grad[seq], **close)
        torch.testing.assert_close(r["column_grad"].double(), column_weight.grad[col], **close)
        torch.testing.assert_close(r["row_grad"].double(), row_weight.grad[:, col], **close)


def test_nothing_is_patched_where_cuda_exists():
    script = ("import torch; torch.cuda.is_available = lambda: True; before = torch.cuda.current_device; "
              "from megatron_ttt.parallel.cpu_shims import apply_cpu_shims; "
              "assert apply_cpu_shims() == [] and torch.cuda.current_device is before; print('untouched')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "untouched"
