"""Bytes each rank sends per optimizer step, by parallel dimension and collective.

Ring collectives over n ranks of a tensor of S bytes: all-gather and reduce-scatter send
(n - 1)/n S per rank, all-reduce twice that; an all-to-all of S bytes per rank sends (n - 1)/n S.
A = e T B D is one micro-batch's full activation.
"""

import math
from dataclasses import dataclass

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.planning.flops import lact_projection_width
from megatron_ttt.planning.hardware import GPU, Assumptions
from megatron_ttt.planning.layout import Layout
from megatron_ttt.planning.memory import hidden_matrix_parameters, local_parameters


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
    cp_all_to_all: float = 0.0
    """Context parallelism: every mixer's inputs to a head split and its output back, forward and
    backward (and in the recomputation under block checkpointing)."""
    tp_muon_all_gather: float = 0.0
    """Muon: each hidden matrix's fp32 momentum gathered whole over TP, once per step."""
    dp_muon_gradients: float = 0.0
    """Muon under ZeRO 1-3: whole fp32 gradients once per step for the clip norm, the hidden
    matrices' a second time (ZeRO 1-2 all-reduce a zero-filled buffer, ZeRO 3 all-gathers)."""

    @property
    def tp(self) -> float:
        return self.tp_all_gather + self.tp_reduce_scatter + self.tp_all_reduce + self.tp_muon_all_gather

    @property
    def cp(self) -> float:
        return self.cp_all_to_all

    @property
    def dp(self) -> float:
        return self.dp_all_reduce + self.dp_reduce_scatter + self.dp_all_gather + self.dp_muon_gradients


def tensor_parallel(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step. With sequence parallelism each layer all-gathers the normed input of the
    in-projection, of fc1 and (mamba) of the pre-conv and reduce-scatters the outputs of the
    out-projection and fc2; the backward mirrors each (gather <-> scatter) and gathers the
    in-projection's and fc1's inputs again for their weight gradients; the embedding
    reduce-scatters and the head gathers (and the mirror). Without it: two all-reduces forward
    (out-projection, fc2) and two backward (the column-parallel inputs' gradients), one for the
    embedding. Both: the TTT layers' post-norm's two fp32 moments and the loss's three fp32 scalars
    per token, all-reduced forward and backward (LaCT normalises per fast-weight head: no moments)."""
    t = layout.tp
    if t == 1:
        return {}
    tokens = layout.micro_tokens * layout.accumulation
    A = layout.act_bytes * tokens * model.hidden_size
    ring, L = (t - 1) / t, model.num_layers
    post_norms = 0 if model.layer_type == "lact" else model.mixers.count("ttt")
    small = 2 * ring * 4 * tokens * (2 * 2 * post_norms + 3)
    if layout.parallel.sequence_parallel_split > 1:
        gathers = 3 if model.pre_conv else 2
        return {"tp_all_gather": ring * A * (L * (gathers + 2 + 2) + 2),
                "tp_reduce_scatter": ring * A * (L * (gathers + 2) + 2), "tp_all_reduce": small}
    return {"tp_all_reduce": 2 * ring * A * (4 * L + 1) + small}


def moved_width(model: TTTModelConfig, kind: str, layout: Layout) -> float:
    """Elements per token a mixer of `kind` moves through its two all-to-alls on one TP rank: the
    inputs to the inner loop (q|p, [k], v and the lr logits), to a LaCT layer's window attention and
    fast weights (its whole in-projection: q, k, v and per fast-weight head the lrs, momentum and
    scale) or to attention (q and the key/value heads, repeated where a TP rank's do not split over
    cp), and the output (D) back."""
    D, d = model.hidden_size, model.head_dim
    if kind == "ttt" and model.layer_type == "lact":
        inputs = lact_projection_width(model)
    elif kind == "ttt":
        inputs = (2 if model.share_qk else 3) * D + model.num_heads
    else:
        kv_local = model.kv_heads // layout.tp
        inputs = D + 2 * d * kv_local * layout.tp * (layout.cp // math.gcd(kv_local, layout.cp))
    return (inputs + D) / layout.tp


def context_parallel(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step: each mixer's all-to-alls over the cp ranks (the Mamba pre-conv's halo of K - 1
    tokens per rank is left out: K/T of a layer's input)."""
    n = layout.cp
    if n == 1:
        return {}
    tokens = layout.micro_tokens * layout.accumulation
    passes = 3 if layout.block_ckpt else 2
    width = sum(moved_width(model, kind, layout) for kind in model.mixers)
    return {"cp_all_to_all": passes * (n - 1) / n * layout.act_bytes * tokens * width}


def data_parallel(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step, of this rank's parameters Psi over the DP x CP ranks (DeepSpeed's schedule: stage 2
    reduces every micro-batch's gradients as they are produced, stage 3 also gathers the weights
    per micro-batch)."""
    n = layout.zero_ranks
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


def muon(model: TTTModelConfig, layout: Layout) -> dict[str, float]:
    """Per step, what Muon's half of the step (training/muon.py) adds."""
    if layout.optimizer != "muon":
        return {}
    matrices, t, n = hidden_matrix_parameters(model), layout.tp, layout.zero_ranks
    out = {"tp_muon_all_gather": (t - 1) / t * 4 * matrices}
    if layout.zero and n > 1:
        gathered = 4 * (local_parameters(model, t) + matrices / t)
        out["dp_muon_gradients"] = (n - 1) / n * gathered * (1 if layout.zero == 3 else 2)
    return out


def traffic(model: TTTModelConfig, layout: Layout) -> Traffic:
    return Traffic(**tensor_parallel(model, layout), **context_parallel(model, layout),
                   **data_parallel(model, layout), **muon(model, layout))


def bandwidths(gpu: GPU, layout: Layout, assume: Assumptions) -> tuple[float, float, float]:
    """Bytes/s a rank reaches in its TP, CP and DP groups: NVLink inside a node, InfiniBand across
    (ranks are ordered TP innermost, then CP, then DP)."""
    tp_link = gpu.nvlink_gbps if layout.tp <= layout.gpus_per_node else gpu.ib_gbps
    cp_link = gpu.nvlink_gbps if layout.tp * layout.cp <= layout.gpus_per_node else gpu.ib_gbps
    dp_link = gpu.ib_gbps if layout.nodes > 1 and layout.zero_ranks > 1 else gpu.nvlink_gbps
    return tuple(link * 1e9 * assume.link_efficiency for link in (tp_link, cp_link, dp_link))
