"""Step time, throughput and MFU of a layout from the matmul rate and the link bandwidths.

    compute = (GEMM FLOPs / matmul_efficiency + inner-loop FLOPs / ttt_efficiency) / peak
    comm    = TP bytes / TP bandwidth * (1 - tp_overlap) + CP bytes / CP bandwidth
              + DP bytes / DP bandwidth * (1 - dp_overlap)
    step    = compute + comm;   MFU = model FLOPs per step per GPU / (step * peak)

FLOPs per rank are the micro-batch tokens of a step (1/cp of each sample's under context
parallelism) times the per-token FLOPs over tp (every matmul is split over the TP ranks). The
context-parallel all-to-alls are not overlapped: each stands between a mixer's projections and
its inner loop, with nothing to hide behind. Peak: bf16 tensor-core rate for bf16, fp32 for fp32.
"""

from dataclasses import dataclass

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning import comm, flops
from megatron_ttt.planning.hardware import GPU, Assumptions
from megatron_ttt.planning.layout import Layout


@dataclass(frozen=True)
class Estimate:
    compute_s: float
    """Matmul time per step per GPU, recomputation included."""
    tp_comm_s: float
    """Exposed tensor-parallel communication per step."""
    cp_comm_s: float
    """Context-parallel all-to-alls per step."""
    dp_comm_s: float
    """Exposed data-parallel (ZeRO) communication per step."""
    step_s: float
    tokens_per_s: float
    """All GPUs together."""
    mfu: float
    """Model FLOPs (no recomputation) over the GPUs' peak."""


def estimate(model: TTTModelConfig, layout: Layout, gpu: GPU, assume: Assumptions) -> Estimate:
    peak = (gpu.bf16_tflops if layout.dtype == "bf16" else gpu.fp32_tflops) * 1e12
    tokens = layout.micro_tokens * layout.accumulation  # this rank's tokens per step
    gemm, ttt = flops.executed_flops(model, layout)
    compute = tokens * (gemm / assume.matmul_efficiency + ttt / assume.ttt_efficiency) / layout.tp / peak
    traffic = comm.traffic(model, layout)
    tp_bw, cp_bw, dp_bw = comm.bandwidths(gpu, layout, assume)
    tp_s = traffic.tp / tp_bw * (1 - assume.tp_overlap)
    cp_s = traffic.cp / cp_bw
    dp_s = traffic.dp / dp_bw * (1 - assume.dp_overlap)
    step = compute + tp_s + cp_s + dp_s
    mfu = tokens * flops.model_flops(model, layout.seq_len) / layout.tp / (step * peak)
    return Estimate(compute, tp_s, cp_s, dp_s, step, layout.global_batch_tokens / step, mfu)
