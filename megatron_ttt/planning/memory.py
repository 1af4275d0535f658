"""Bytes per GPU of a layout: model states (by ZeRO stage and dtype), activations, buffers.

Model states follow what DeepSpeed allocates (Psi: this rank's parameters, N: the ranks ZeRO
partitions over, data x context parallel). fp32 runs keep a separate fp32 master copy as well
(DeepSpeed's ZeRO optimizers clone the partition they own); bf16 runs keep bf16 working weights
and gradients plus fp32 master weights, fp32 gradients and Adam's two moments. Stage 1
partitions the optimizer side, stage 2 also the gradients, stage 3 also the working weights.
With Muon (training/muon.py) the hidden matrices have one fp32 momentum instead of Adam's two
moments, kept whole on every data-parallel rank (ZeRO does not partition it).
"""

from dataclasses import dataclass, replace
from math import prod

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.models.presets import parameter_count
from megatron_ttt.planning import activations
from megatron_ttt.planning.hardware import GIB, GPU, Assumptions
from megatron_ttt.planning.layout import Layout


def replicated_parameters(model: TTTModelConfig) -> int:
    """Parameters every TP rank holds whole: RMSNorm gains, token offsets, the pre-conv."""
    D = model.hidden_size
    per_layer = model.mini_batch_size + 2 * D + ((D * model.conv_kernel + D) + D if model.pre_conv else 0)
    return model.num_layers * per_layer + D


def local_parameters(model: TTTModelConfig, tp: int) -> float:
    """Psi: this TP rank's parameters (everything split over heads or vocabulary, by tp)."""
    replicated = replicated_parameters(model)
    return (parameter_count(model) - replicated) / tp + replicated


def hidden_matrix_parameters(model: TTTModelConfig) -> int:
    """Parameters of the hidden matrices (what Muon steps; every one is split over TP)."""
    return sum(prod(shape) for rule in rules(model) if rule.hidden_matrix for shape in rule.shapes)


def optimizer_moments(model: TTTModelConfig, layout: Layout) -> float:
    """Bytes of optimizer moments on one rank: Adam's two (1/N of them from ZeRO-1 on), and with
    Muon one whole momentum for the hidden matrices instead."""
    psi, n = local_parameters(model, layout.tp), (layout.zero_ranks if layout.zero else 1)
    muon = hidden_matrix_parameters(model) / layout.tp if layout.optimizer == "muon" else 0
    return 8 * (psi - muon) / n + 4 * muon


@dataclass(frozen=True)
class States:
    parameters: float
    """Working weights (bf16 or fp32); 1/N of them under ZeRO-3."""
    gradients: float
    """Gradients that live from the backward to the step (working ones, and the fp32 ones the
    ZeRO optimizers make for their partition at the step)."""
    persistent_gradients: float
    """Gradient buffers allocated once and kept (bf16 stage 0: the fp32 accumulation copy;
    stage 3: the flat partition buffer)."""
    optimizer: float
    """fp32 master weights and the optimizer's moments (1/N of them from ZeRO-1 on, but Muon's)."""


def model_states(model: TTTModelConfig, layout: Layout) -> States:
    """Bytes of parameters, gradients and optimizer states on one rank."""
    psi, n, z, e = local_parameters(model, layout.tp), layout.zero_ranks, layout.zero, layout.act_bytes
    params = e * psi / (n if z == 3 else 1)
    if z == 0:
        # fp32: torch AdamW steps on .grad; bf16: DeepSpeed's BF16_Optimizer accumulates the bf16
        # .grad into a kept fp32 copy and steps a fp32 master copy.
        grads, kept = e * psi, (4 * psi if e == 2 else 0)
        master = 4 * psi if e == 2 else 0
        return States(params, grads, kept, master + optimizer_moments(model, layout))
    working = e * psi / (n if z >= 2 else 1)
    kept = e * psi / n if z == 3 else 0
    return States(params, working + 4 * psi / n, kept, 4 * psi / n + optimizer_moments(model, layout))


def buffer_bytes(model: TTTModelConfig, layout: Layout, assume: Assumptions) -> float:
    """DeepSpeed's communication buffers: ZeRO 1-3 allocate a gradient-reduction bucket of
    reduce_bucket_size elements (fp32 at stage 1, which accumulates in fp32, and for fp32 runs;
    the working dtype at stages 2 and 3); ZeRO-3 also keeps the prefetched parameters."""
    if layout.zero == 0:
        return 0.0
    dtype = 4 if layout.zero == 1 or layout.act_bytes == 4 else layout.act_bytes
    bucket = dtype * assume.reduce_bucket_elements
    if layout.zero == 3:
        bucket += layout.act_bytes * min(assume.prefetch_bucket_elements, local_parameters(model, layout.tp))
    return bucket


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU, by term, and their peak over a step."""

    parameters: float
    gradients: float
    """Gradients alive from the backward to the step."""
    persistent_gradients: float
    """Gradient buffers kept for the whole run."""
    optimizer: float
    ttt_activations: float
    """The TTT inner loop's saved tensors, as configured."""
    ttt_activations_without_time_checkpointing: float
    """The same without time-axis checkpointing (for comparison)."""
    block_activations: float
    """Everything else the layers keep (norms, projections, post-norm, MLP)."""
    head_activations: float
    """Final norm, head and loss, including their momentary peak inside the loss."""
    recompute: float
    """The largest recomputation alive in the backward (one block or one time-axis group)."""
    buffers: float
    """DeepSpeed's ZeRO buckets."""
    optimizer_step: float
    """Temporaries of the optimizer step: DeepSpeed's FusedAdam on the CPU holds one fp32 tensor per
    stepped parameter (4 bytes each; measured); its CUDA kernels update in place (none)."""
    accumulating: bool
    """Gradient accumulation: the gradients of earlier micro-batches live through later forwards."""
    fragmentation: float = 0.0
    """Allocator margin plus the memory outside it (CUDA context, NCCL)."""

    @property
    def allocated(self) -> float:
        """The allocator's peak (the measured peak's counterpart): the kept states plus the larger
        of the activation peak (end of the forward, or a recomputation in the backward) and the
        gradients at the end of the backward or in the step; both together when accumulation
        keeps the gradients through the forward."""
        kept = self.parameters + self.persistent_gradients + self.optimizer + self.buffers
        stored = self.ttt_activations + self.block_activations
        acts = stored + max(self.head_activations, self.recompute)
        late = max(self.recompute, self.optimizer_step)
        if self.accumulating:
            return kept + self.gradients + max(acts, late)
        return kept + max(acts, self.gradients + late)

    @property
    def total(self) -> float:
        return self.allocated + self.fragmentation

    def fits(self, gpu: GPU) -> bool:
        return self.total <= gpu.memory_gib * GIB


def memory(model: TTTModelConfig, layout: Layout, assume: Assumptions, on_gpu: bool = True) -> Memory:
    """The per-GPU breakdown; `on_gpu` False drops the GPU-only allocator margin and context."""
    states = model_states(model, layout)
    stored = activations.stored_bytes(model, layout)
    tokens = layout.micro_tokens
    no_ckpt = 0.0 if layout.block_ckpt else (
        model.mixers.count("ttt") * tokens * activations.inner_loop_bytes(model, layout))
    head = stored["head"] + tokens * activations.head_transient_bytes(model, layout)
    stepped = local_parameters(model, layout.tp) / (layout.zero_ranks if layout.zero else 1)
    partial = Memory(states.parameters, states.gradients, states.persistent_gradients, states.optimizer, stored["ttt"],
                     no_ckpt, stored["blocks"], head, activations.recompute_transient_bytes(model, layout),
                     buffer_bytes(model, layout, assume), 0.0 if on_gpu else 4 * stepped, layout.accumulation > 1)
    margin = assume.fragmentation * partial.allocated + assume.cuda_context_gib * GIB if on_gpu else 0.0
    return replace(partial, fragmentation=margin)
