"""The planner's LaCT terms against a plain-PyTorch LaCT layer built on the op (FLOPs, as torch
counts them) and against the op's saved tensors (activations)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.ops.lact import lact_swiglu, lact_swiglu_with_weights
from megatron_ttt.planning import comm, flops, lact_activations
from megatron_ttt.planning.activations import inner_loop_bytes, inner_loop_checkpointed_bytes
from megatron_ttt.planning.layout import Layout

# Odd sizes: 6 attention heads of 4, 2 fast-weight heads of 12 with a SwiGLU of 24, T = 23 tokens in
# chunks of 8 (the last one short), a window of 5.
MODEL = TTTModelConfig(vocab_size=64, hidden_size=24, intermediate_size=40, num_layers=1, num_heads=6,
                       layer_type="lact", backbone="transformer", attention_window=5, lact_heads=2,
                       lact_chunk_size=8, lact_inter_multi=2, lact_fw_rank=0, lact_muon=True)
T, B = 23, 2


class LaCTLayer(torch.nn.Module):
    """LaCT's layer and the MLP after it, written plainly: the fused in-projection, the window
    attention and the fast weights on the same q, k, v, the per-head RMSNorm and scale, the sum,
    the out-projection."""

    def __init__(self, model: TTTModelConfig, time_checkpoint_group: int = 0):
        super().__init__()
        D, Hf, d, h = model.hidden_size, model.lact_heads, model.lact_head_dim, model.lact_hidden
        self.model, self.group = model, time_checkpoint_group
        self.in_proj = torch.nn.Linear(D, flops.lact_projection_width(model), bias=False)
        self.out_proj = torch.nn.Linear(D, D, bias=False)
        self.w0, self.w2 = (torch.nn.Parameter(torch.randn(Hf, h, d) / d**0.5) for _ in range(2))
        self.w1 = torch.nn.Parameter(torch.randn(Hf, d, h) / h**0.5)
        self.fc1 = torch.nn.Linear(D, 2 * model.intermediate_size, bias=False)
        self.fc2 = torch.nn.Linear(model.intermediate_size, D, bias=False)

    def forward(self, x):  # [T,B,D]
        m, (T, B, D) = self.model, x.shape
        Hf, H = m.lact_heads, m.num_heads
        gates = 2 * Hf if m.lact_momentum else Hf  # momentum coefficients and scales
        q, k, v, lrs, rest = self.in_proj(x).split([D, D, D, 3 * Hf, gates], dim=-1)
        heads = [t.reshape(T, B, H, D // H).permute(1, 2, 0, 3) for t in (q, k, v)]
        window = torch.ones(T, T, dtype=torch.bool).tril().triu(-(m.attention_window - 1))
        attention = F.scaled_dot_product_attention(*heads, attn_mask=window).permute(2, 0, 1, 3).reshape(T, B, D)

        def per_head(t):  # [T,B,Hf*c] -> [B*Hf,T,c]
            return t.reshape(T, B, Hf, -1).permute(1, 2, 0, 3).reshape(B * Hf, T, -1)

        fq, fk = (F.normalize(F.silu(per_head(t)), dim=-1) for t in (q, k))
        fv = F.silu(per_head(v))
        lr0, lr1, lr2 = per_head(F.softplus(lrs)).chunk(3, dim=-1)
        momentum = per_head(torch.sigmoid(rest[..., :Hf])) if m.lact_momentum else None
        scale = per_head(F.silu(rest[..., -Hf:]))
        weights = [w.repeat(B, 1, 1) for w in (self.w0, self.w1, self.w2)]
        o = lact_swiglu_with_weights(*weights, fq, fk, fv, lr0, lr1, lr2, m.lact_chunk_size, m.lact_muon, momentum,
                                     time_checkpoint_group=self.group)[0]
        o = F.rms_norm(o, (o.shape[-1],)) * scale
        fast = o.reshape(B, Hf, T, -1).permute(2, 0, 1, 3).reshape(T, B, D)
        y = x + self.out_proj(attention + fast)
        gate, up = self.fc1(y).chunk(2, dim=-1)
        return y + self.fc2(F.silu(gate) * up)


def _counted(layer: torch.nn.Module) -> tuple[float, float]:
    """FLOPs per token of the forward and of the backward, as torch counts them."""
    x = torch.randn(T, B, MODEL.hidden_size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = layer(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        y.square().sum().backward()
    return forward / (T * B), counter.get_total_flops() / (T * B)


@pytest.mark.parametrize("model", [MODEL, replace(MODEL, lact_momentum=False, lact_muon=False, lact_chunk_size=T)],
                         ids=["momentum-muon", "one-chunk"])
def test_a_lact_layer_counts_every_matmul_as_torch_does(model):
    """Every matmul of the layer and its MLP, exactly; the window attention, for which torch's
    counter has no CPU rule, is the planner's 4 D per key attended. The backward about twice the
    forward, and time-axis checkpointing's backward what the planner says it recomputes more."""
    torch.manual_seed(0)
    planned = flops.layer_flops(model, "ttt", T)
    forward, backward = _counted(LaCTLayer(model))
    assert forward == pytest.approx(planned.total - planned.attention, rel=1e-12, abs=0)
    assert planned.attention == 4 * model.hidden_size * flops.mean_keys(T, model.attention_window)
    assert backward == pytest.approx(2 * forward, rel=0.05)
    torch.manual_seed(0)
    _, recomputing = _counted(LaCTLayer(model, time_checkpoint_group=1))
    plain, grouped = (flops.executed_flops(model, Layout(1, 1, seq_len=T, time_checkpoint_group=g)) for g in (0, 1))
    assert recomputing - backward == pytest.approx(sum(grouped) - sum(plain), rel=1e-12)
    assert sum(plain) == pytest.approx(3 * (planned.total + flops.head_flops(model)), rel=1e-12)


def _saved_elements(N, T, C, d_in, h, d_out, momentum: bool, muon: bool) -> int:
    """Elements the op saves for the backward beyond its inputs, by storage."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(N, *s, generator=g).requires_grad_() for s in
               ((h, d_in), (d_out, h), (h, d_in), (T, d_in), (T, d_in), (T, d_out))]
    tensors += [torch.rand(N, T, 1, generator=g).requires_grad_() for _ in range(4 if momentum else 3)]
    inputs = {t.untyped_storage().data_ptr() for t in tensors}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs:
            saved[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lact_swiglu(*tensors[:9], C, muon, tensors[9] if momentum else None)
    return sum(saved.values())


@pytest.mark.parametrize("T, C, momentum, muon", [(23, 8, False, False), (23, 8, True, True), (16, 16, True, False),
                                                  (40, 7, True, False), (21, 7, False, True)])
def test_the_op_saves_what_the_plan_says(T, C, momentum, muon):
    """Every element autograd keeps, against lact_activations, exactly."""
    measured = _saved_elements(2, T, C, 5, 7, 6, momentum, muon)
    assert 2 * lact_activations.sequence_saved(T, C, 5, 7, 6, momentum, muon) == measured


def test_time_axis_checkpointing_keeps_one_state_per_group():
    model, layout = replace(MODEL, lact_chunk_size=16, lact_muon=False), Layout(1, 1, seq_len=256)
    d, h = model.lact_head_dim, model.lact_hidden
    state = h * 3 * d  # w0, w2 [h,d], w1 [d,h]
    per_token = {g: inner_loop_checkpointed_bytes(model, replace(layout, time_checkpoint_group=g)) for g in (1, 4)}
    # 16 chunks in 16 (or 4) groups: the weights each group after the first starts from, the
    # velocity each group starts from, and the initial weights' row norms.
    for group, states in ((1, 15 + 16), (4, 3 + 4)):
        assert per_token[group] * 256 == 4 * model.lact_heads * (states * state + 2 * h + d)
    assert per_token[4] < inner_loop_bytes(model, layout) / 20


def test_the_cp_all_to_all_moves_the_whole_in_projection():
    layout = Layout(1, 2, cp=2)
    width = 3 * MODEL.hidden_size + 5 * MODEL.lact_heads
    assert comm.moved_width(MODEL, "ttt", layout) == width + MODEL.hidden_size


def test_time_axis_checkpointing_shrinks_only_the_fast_weights_share():
    """LaCT's 760M shape at 32k: checkpointing groups of 4 chunks keeps a fraction of the op's
    tensors and recomputes one group at a time; the rest of the layer keeps what it kept."""
    from megatron_ttt.planning.hardware import GPUS, Assumptions
    from megatron_ttt.planning.search import plan

    model = replace(MODEL, hidden_size=1536, num_heads=24, intermediate_size=4096, num_layers=24, lact_heads=4,
                    lact_chunk_size=2048, lact_inter_multi=1, attention_window=2048, lact_muon=False)
    layout = Layout(1, 8, cp=2, seq_len=32768, global_batch_tokens=2**20)
    off, on = (plan(model, replace(layout, time_checkpoint_group=g), GPUS["h100-80gb"], Assumptions()).memory
               for g in (0, 4))
    assert on.ttt_activations < off.ttt_activations / 50
    assert on.ttt_activations_without_time_checkpointing == off.ttt_activations
    assert 0 == off.recompute < on.recompute < off.ttt_activations / 24  # one group of one layer
    assert on.block_activations == off.block_activations
