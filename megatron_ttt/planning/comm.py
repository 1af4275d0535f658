"""Bytes each rank sends per optimizer step, by parallel dimension and collective.

Ring collectives over n ranks of a tensor of S bytes: all-gather and reduce-scatter send
(n - 1)/n S per rank, all-reduce twice that. A = e T B D is one micro-batch's full activation.
"""

from dataclasses import dataclass

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning.hardware import GPU, Assumptions
from megatron_ttt.planning.layout import Layout
from megatron_ttt.planning.memory import local_parameters


@dataclass(frozen=True)
class Traffic:
    """Bytes sent per rank per optimizer step."""

    tp_all_gather: float = 0.0
    tp_reduce_scatter: float = 0.0
    tp_all_reduce: float = 0.0
    dp_all_reduce: float = 0.0
    """ZeRO 0: the gradients, once per step."""
    dp_reduce_scatter: float = 0.0
    """ZeRO 1 (once per step, fp32 accumulator), 2 and 3 (every micro-batch): the gradients."""
    dp_all_gather: float = 0.0
    """ZeRO 1-2: the updated weights once per step; ZeRO 3: the weights in every forward and backward."""

    @property
    def tp(self) -> float:
        return self.tp_all_gather + self.tp_reduce_scatter + self.tp_all_reduce

    @property
    def dp(self) -> float:
        return self.dp_all_reduce + self.dp_reduce_scatter + self.dp_all_gather


def tensor_parallel(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step. With sequence parallelism each layer all-gathers the normed input of the
    in-projection, of fc1 and (mamba) of the pre-conv and reduce-scatters the outputs of the
    out-projection and fc2; the backward mirrors each (gather <-> scatter) and gathers the
    in-projection's and fc1's inputs again for their weight gradients; the embedding
    reduce-scatters and the head gathers (and the mirror). Without it: two all-reduces forward
    (out-projection, fc2) and two backward (the column-parallel inputs' gradients), one for the
    embedding. Both: the TTT layers' post-norm's two fp32 moments and the loss's three fp32 scalars
    per token, all-reduced forward and backward."""
    t = layout.tp
    if t == 1:
        return {}
    tokens = layout.micro_tokens * layout.accumulation
    A = layout.act_bytes * tokens * model.hidden_size
    ring, L = (t - 1) / t, model.num_layers
    small = 2 * ring * 4 * tokens * (2 * 2 * model.mixers.count("ttt") + 3)
    if layout.sp > 1:
        gathers = 3 if model.pre_conv else 2
        return {"tp_all_gather": ring * A * (L * (gathers + 2 + 2) + 2),
                "tp_reduce_scatter": ring * A * (L * (gathers + 2) + 2), "tp_all_reduce": small}
    return {"tp_all_reduce": 2 * ring * A * (4 * L + 1) + small}


def data_parallel(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step, of this rank's parameters Psi (DeepSpeed's schedule: stage 2 reduces every
    micro-batch's gradients as they are produced, stage 3 also gathers the weights per micro-batch)."""
    n = layout.dp
    if n == 1:
        return {}
    ring, psi, e, acc = (n - 1) / n, local_parameters(model, layout.tp), layout.act_bytes, layout.accumulation
    if layout.zero == 0:
        return {"dp_all_reduce": 2 * ring * psi * e}
    if layout.zero == 1:
        return {"dp_reduce_scatter": ring * psi * 4, "dp_all_gather": ring * psi * e}
    if layout.zero == 2:
        return {"dp_reduce_scatter": acc * ring * psi * e, "dp_all_gather": ring * psi * e}
    return {"dp_reduce_scatter": acc * ring * psi * e, "dp_all_gather": 2 * acc * ring * psi * e}


def traffic(model: TTTModelConfig, layout: Layout) -> Traffic:
    return Traffic(**tensor_parallel(model, layout), **data_parallel(model, layout))


def bandwidths(gpu: GPU, layout: Layout, assume: Assumptions) -> tuple[float, float]:
    """Bytes/s a rank reaches in its TP and DP groups: NVLink inside a node, InfiniBand across."""
    tp_link = gpu.nvlink_gbps if layout.tp <= layout.gpus_per_node else gpu.ib_gbps
    dp_link = gpu.ib_gbps if layout.nodes > 1 and layout.dp > 1 else gpu.nvlink_gbps
    return tp_link * 1e9 * assume.link_efficiency, dp_link * 1e9 * assume.link_efficiency
