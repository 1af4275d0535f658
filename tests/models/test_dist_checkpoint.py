"""megatron-core dist_checkpointing reshards the model across TP sizes (saved at 2, loaded at 1,
and back), for both backbones (the mamba one has every kind of tensor: fused, per head, conv) and LaCT's
layer (slow)."""

import pytest
import torch

from tests.distributed import run_distributed
from tests.models.ckpt_cases import load_then_save, save_in_process
from tests.models.tp_cases import TINY, case_model


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("backbone, layer_type", [("mamba", "mlp"), pytest.param("transformer", "linear",
                                                                           marks=pytest.mark.slow),
                                                 pytest.param("transformer", "lact", marks=pytest.mark.slow)])
def test_checkpoint_reshards_across_tensor_parallel_sizes(tmp_path, backbone, layer_type):
    cfg = case_model(TINY, {"layer_type": layer_type, "backbone": backbone})
    tp2, tp1 = str(tmp_path / "tp2"), str(tmp_path / "tp1")
    weights, logits_tp2 = run_distributed(2, load_then_save, cfg, None, tp2)[0]
    at_tp1, logits_tp1 = run_distributed(1, load_then_save, cfg, tp2, tp1)[0]
    assert_same_weights(at_tp1, weights)
    # TP=2 sums the out-projections' partial products across ranks: float32 rounding differs.
    torch.testing.assert_close(logits_tp1, logits_tp2, rtol=1e-5, atol=1e-6)
    back = run_distributed(2, load_then_save, cfg, tp1, None)
    assert_same_weights(back[0][0], weights)
    assert torch.equal(back[0][1], logits_tp2) and torch.equal(back[1][1], logits_tp2)


def test_a_save_writes_in_each_ranks_own_process(tmp_path):
    """No forked writers and no helper process (a fork beside gloo's threads can hang a save)."""
    results = run_distributed(2, save_in_process, TINY, str(tmp_path / "ckpt"))
    assert results == [([], True), ([], True)]
