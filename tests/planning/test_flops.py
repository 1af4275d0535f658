"""FLOPs per token against torch's FLOP counter on a real forward and backward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_ttt.models.presets import preset
from megatron_ttt.planning import flops


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_forward_flops_equal_the_counted_matmuls(groups, layer_type, backbone):
    """Every matmul, bmm and convolution the model runs, as torch counts them. The mamba
    backbone's convolutions also count their K - 1 padded outputs (0.03% here)."""
    from megatron_ttt.models.build import build_model

    model = preset("tiny", layer_type, backbone, vocab_size=512)
    net = build_model(model, groups, init_seed=0)
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


@pytest.mark.parametrize("seq_len, window", [(1, None), (10, None), (10, 3), (10, 10), (7, 20), (100, 1)])
def test_mean_keys_counts_every_query(seq_len, window):
    keys = [min(i + 1, window or seq_len) for i in range(seq_len)]
    assert flops.mean_keys(seq_len, window) == pytest.approx(sum(keys) / seq_len, rel=1e-12)


def test_a_hybrid_counts_every_matmul_as_torch_does(groups):
    """A TTT layer and a full-attention layer at T = 128: every matmul outside the attention
    kernel exactly as torch counts it. Torch's counter has no rule for the CPU's fused attention
    kernel (it counts nothing there; on a GPU it would count the whole T x T rectangle, masked
    scores included): the planner counts the causal keys, 4 d H (T + 1) / 2 per token."""
    from megatron_ttt.models.build import build_model

    model = preset("tiny", "linear", "transformer", vocab_size=512, layer_pattern="T*")
    T, B = 128, 2
    with FlopCounterMode(display=False) as counter:
        build_model(model, groups, init_seed=0)(torch.randint(0, model.vocab_size, (B, T)))
    planned_attention = sum(layer.attention for layer in flops.layers(model, T))
    assert planned_attention == 4 * model.head_dim * model.num_heads * (T + 1) / 2
    assert counter.get_total_flops() / (T * B) == flops.forward_flops(model, T) - planned_attention


def test_an_attention_layer_needs_the_sequence_length():
    with pytest.raises(ValueError, match="depend on the sequence length"):
        flops.model_flops(preset("tiny", layer_pattern="TW"))


@pytest.mark.parametrize("use_muon", [False, True])
def test_lact_flops_equal_the_counted_matmuls(use_muon):
    """The LaCT op's forward at odd sizes (T not a multiple of the chunk), as torch counts it; its
    backward about twice that."""
    from megatron_ttt.ops.lact import lact_swiglu

    N, T, chunk, d_in, hidden, d_out = 2, 23, 8, 5, 7, 6
    g = torch.Generator().manual_seed(0)
    w0, w1, w2 = (torch.randn(N, *s, generator=g).requires_grad_() for s in
                  ((hidden, d_in), (d_out, hidden), (hidden, d_in)))
    q, k, v = (torch.randn(N, T, d, generator=g).requires_grad_() for d in (d_in, d_in, d_out))
    lrs = [torch.full((N, T, 1), 0.1, requires_grad=True) for _ in range(3)]
    with FlopCounterMode(display=False) as counter:
        o = lact_swiglu(w0, w1, w2, q, k, v, *lrs, chunk, use_muon, torch.rand(N, T, 1, generator=g))
    forward = counter.get_total_flops()
    assert forward == N * flops.lact_forward_flops(T, chunk, d_in, hidden, d_out, use_muon)
    with FlopCounterMode(display=False) as counter:
        o.sum().backward()
    assert counter.get_total_flops() == pytest.approx(2 * forward, rel=0.1)
