"""The text `mttt plan` prints: one layout in full, or the best layouts as a table."""

from dataclasses import fields

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.presets import parameter_count
from megatron_ttt.planning import activations, comm, flops
from megatron_ttt.planning.hardware import GIB, GPU, Assumptions
from megatron_ttt.planning.layout import Layout
from megatron_ttt.planning.search import Plan


def describe(layout: Layout) -> str:
    sp = " (SP)" if layout.parallel.sequence_parallel_split > 1 else ""
    time = f"time-axis G={layout.time_checkpoint_group}" if layout.time_checkpoint_group else "time-axis off"
    return (f"TP {layout.tp}{sp} x CP {layout.cp} x DP {layout.dp}, ZeRO {layout.zero}, seq {layout.seq_len}, "
            f"micro-batch {layout.micro_batch} x {layout.accumulation} accumulation, {time}, blocks "
            f"{'on' if layout.block_ckpt else 'off'}, {layout.dtype}")


def table(model: TTTModelConfig, plans: list[Plan], gpu: GPU) -> str:
    lines = [f"best layouts ({len(plans)} shown), {plans[0].layout.nodes} x {plans[0].layout.gpus_per_node} {gpu.name}:",
             f"{'TP':>3} {'CP':>3} {'DP':>4} {'ZeRO':>4} {'micro':>5} {'time G':>6} {'blocks':>6} {'GiB/GPU':>8} "
             f"{'step s':>7} {'tokens/s':>10} {'MFU':>6}"]
    for p in plans:
        lay, est = p.layout, p.estimate
        group = lay.time_checkpoint_group or "off"
        lines.append(f"{lay.tp:>3} {lay.cp:>3} {lay.dp:>4} {lay.zero:>4} {lay.micro_batch:>5} {group:>6} "
                     f"{'on' if lay.block_ckpt else 'off':>6} {p.memory.total / GIB:>8.1f} {est.step_s:>7.2f} "
                     f"{est.tokens_per_s:>10,.0f} {est.mfu:>6.1%}")
    return "\n".join(lines)


def _memory_lines(model: TTTModelConfig, p: Plan, gpu: GPU) -> list[str]:
    m, lay = p.memory, p.layout
    time = f"time-axis G={lay.time_checkpoint_group}" if lay.time_checkpoint_group else "no time-axis ckpt"
    rows = [("parameters", m.parameters), ("gradients (backward to step)", m.gradients),
            ("gradient buffers kept", m.persistent_gradients), (f"optimizer states (ZeRO {lay.zero})", m.optimizer),
            (f"TTT activations ({time})", m.ttt_activations),
            ("  the same without time-axis ckpt", m.ttt_activations_without_time_checkpointing),
            (f"block activations (blocks {'on' if lay.block_ckpt else 'off'})", m.block_activations),
            ("head and loss", m.head_activations), ("recomputation in the backward", m.recompute),
            ("communication buffers (ZeRO buckets)", m.buffers), ("optimizer-step temporaries", m.optimizer_step),
            ("fragmentation margin + CUDA context", m.fragmentation)]
    if model.layer_type == "lact":
        tensors = 6 if model.lact_momentum else 3  # w0, w1, w2 (and their velocity)
        state = activations.fast_weight_state_bytes(model, lay)
        rows.insert(5, (f"  one layer's state: [B*Hf,h,d] fp32 x {tensors}", state))
    lines = ["memory per GPU                                   GiB"]
    lines += [f"  {name:<44} {value / GIB:>7.2f}" for name, value in rows]
    verdict = "fits" if m.fits(gpu) else "DOES NOT FIT"
    lines.append(f"  {'total':<44} {m.total / GIB:>7.2f}  of {gpu.memory_gib:g}: {verdict}")
    return lines


def _flops_lines(model: TTTModelConfig, seq_len: int) -> list[str]:
    per_layer, L = flops.layers(model, seq_len), model.num_layers
    lines = [f"forward FLOPs per token (seq {seq_len})             GFLOP"]
    for f in fields(flops.LayerFlops):
        total = sum(getattr(layer, f.name) for layer in per_layer)
        if total or f.name in ("projections", "mlp"):
            lines.append(f"  {f.name.replace('_', ' ') + f' ({L} layers)':<42} {total / 1e9:>7.3f}")
    lines.append(f"  {'head':<42} {flops.head_flops(model) / 1e9:>7.3f}")
    lines.append(f"  training (3 x forward): {flops.model_flops(model, seq_len) / 1e9:.2f} GFLOP/token "
                 f"(6 N = {6 * parameter_count(model) / 1e9:.2f})")
    return lines


def _comm_lines(model: TTTModelConfig, p: Plan) -> list[str]:
    traffic = comm.traffic(model, p.layout)
    lines = ["sent per GPU per step                             GB"]
    lines += [f"  {f.name.replace('_', ' '):<44} {getattr(traffic, f.name) / 1e9:>7.2f}" for f in fields(traffic)
              if getattr(traffic, f.name)]
    return lines if len(lines) > 1 else lines + ["  nothing (one GPU)"]


def report(model: TTTModelConfig, p: Plan, gpu: GPU, assume: Assumptions) -> str:
    lay, est = p.layout, p.estimate
    pattern = f", layer pattern {model.layer_pattern}" if model.layer_pattern else ""
    shape = (f"{model.num_layers} layers, D {model.hidden_size}, {model.num_heads} heads of {model.head_dim}, "
             f"FFN {model.intermediate_size}, vocabulary {model.vocab_size}")
    head = (f"{model.layer_type} {model.backbone} model{pattern} ({shape}): {parameter_count(model):,} parameters "
            f"({parameter_count(model) / 1e9:.2f} B), on {lay.nodes} x {lay.gpus_per_node} {gpu.name}\n"
            f"layout: {describe(lay)}")
    cp = f" + CP comm {est.cp_comm_s:.3f} s" if lay.cp > 1 else ""
    timing = (f"step: compute {est.compute_s:.3f} s + TP comm {est.tp_comm_s:.3f} s{cp} + DP comm "
              f"{est.dp_comm_s:.3f} s = {est.step_s:.3f} s; {est.tokens_per_s:,.0f} tokens/s; MFU {est.mfu:.1%}")
    stated = "assumptions: " + ", ".join(f"{f.name}={getattr(assume, f.name):g}" for f in fields(assume))
    return "\n".join([head, "", *_memory_lines(model, p, gpu), "", *_flops_lines(model, lay.seq_len), "",
                      *_comm_lines(model, p), "", timing, stated])
