"""Compiled blocks (models/compile.py) against eager: every layer kind and a TP 2 x CP 2 layout
give the same loss at every step and the same gradients within float32 rounding; at TP 1 one
graph per kind of block, built once (not per layer or step), and scoring builds one per length
bucket."""

from dataclasses import replace

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.compile import compile_blocks
from megatron_ttt.models.scoring import bucket_length, token_logprobs
from tests.distributed import run_distributed
from tests.models.compile_cases import compiled_against_eager, fresh_compiler, graphs
from tests.models.tp_cases import HYBRID, TINY, rel

FLOAT32 = 1e-5
"""Relative error of float32 rounding over the few ops that compiling may reorder."""


def tokens_and_labels(cfg, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return tuple(torch.randint(0, cfg.vocab_size, (2, seq_len), generator=g) for _ in range(2))


@pytest.mark.parametrize("cfg, kinds", [
    (replace(TINY, layer_type="linear"), 1),
    (replace(TINY, layer_type="mlp", backbone="mamba"), 1),
    (replace(HYBRID, document_boundaries="reset", eos_token_id=3), 3),  # TTT, window, full attention
], ids=["linear", "mlp", "hybrid"])
def test_compiled_blocks_train_as_eager(groups, cfg, kinds):
    eager, compiled = (build_model(cfg, groups, init_seed=0) for _ in range(2))
    result = compiled_against_eager(eager, compiled, *tokens_and_labels(cfg, 27))
    assert result["loss"] < FLOAT32
    assert result["grads"] < FLOAT32, result["worst"]
    assert result["graphs"] == kinds  # one per kind of block, for every layer and step


@pytest.mark.slow
def test_tensor_and_context_parallel_compiled_train_as_eager():
    ranks = run_distributed(4, _tp2_cp2, replace(TINY, layer_type="linear"))
    for result in ranks:  # compiled in pieces under TP (models/compile.py): the numbers are what is checked
        assert result["loss"] < FLOAT32
        assert result["grads"] < FLOAT32, result["worst"]


def _tp2_cp2(rank, world, store, cfg):
    from tests.models.compile_cases import tp2_cp2

    return tp2_cp2(rank, world, store, cfg)


def test_scoring_builds_one_graph_per_length_bucket(groups):
    cfg = replace(TINY, layer_type="linear")
    model = build_model(cfg, groups, init_seed=0)
    eager = [token_logprobs(model, tokens_and_labels(cfg, n)[0][:n % 2 + 1], batch_size=2) for n in (18, 27, 32)]
    fresh_compiler()
    compile_blocks(model, "aot_eager")
    scored = [token_logprobs(model, tokens_and_labels(cfg, n)[0][:n % 2 + 1], batch_size=2, fixed_shapes=True)
              for n in (18, 27, 32)]
    assert {bucket_length(n) for n in (18, 27, 32)} == {32}
    assert graphs() == 1  # three lengths, one and two rows: one shape
    for got, want in zip(scored, eager):
        assert got.shape == want.shape
        assert rel(got, want) < FLOAT32
