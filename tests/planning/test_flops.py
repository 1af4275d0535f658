"""FLOPs per token against torch's FLOP counter on a real forward and backward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_ttt.models.presets import preset
from megatron_ttt.planning import flops
from megatron_ttt.planning.hardware import Assumptions
from megatron_ttt.planning.layout import Layout


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_forward_flops_equal_the_counted_matmuls(single_process_parallel, layer_type, backbone):
    """Every matmul, bmm and convolution the model runs, as torch counts them. The mamba
    backbone's convolutions also count their K - 1 padded outputs (0.03% here)."""
    from megatron_ttt.models.build import build_model

    model = preset("tiny", layer_type, backbone, vocab_size=512)
    net = build_model(model)
    T, B = 128, 2
    tokens = torch.randint(0, model.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        loss = net(tokens, tokens)
    counted = counter.get_total_flops() / (T * B)
    tolerance = 0.0 if backbone == "transformer" else 1e-3
    assert counted == pytest.approx(flops.forward_flops(model), rel=tolerance, abs=0)
    if backbone == "transformer":
        with FlopCounterMode(display=False) as counter:
            loss.sum().backward()
        # The backward is about twice the forward (a few operands need no gradient: 1-2% less).
        assert counter.get_total_flops() / (T * B) == pytest.approx(2 * counted, rel=0.02)


def test_seven_b_training_flops_are_close_to_six_n():
    from megatron_ttt.models.presets import parameter_count

    model = preset("7b")
    assert flops.model_flops(model) == pytest.approx(6 * parameter_count(model), rel=0.02)


def test_a_hybrid_model_is_refused_by_name():
    from megatron_ttt.planning.memory import memory

    model = preset("tiny", layer_pattern="TW")
    with pytest.raises(flops.UnplannedModel, match=r"layer_pattern 'TW' has attention at layers \[1\]"):
        flops.model_flops(model)
    with pytest.raises(flops.UnplannedModel):
        memory(model, Layout(1, 1, seq_len=64, global_batch_tokens=64), Assumptions())
