"""Bytes per GPU of a layout: model states (by ZeRO stage and dtype), activations, buffers.

Model states follow what DeepSpeed allocates (Psi: this rank's parameters, N: data-parallel
size). fp32 runs keep a separate fp32 master copy as well (DeepSpeed's ZeRO optimizers clone
the partition they own); bf16 runs keep bf16 working weights and gradients plus fp32 master
weights, fp32 gradients and Adam's two moments. Stage 1 partitions the optimizer side, stage 2
also the gradients, stage 3 also the working weights.
"""

from dataclasses import dataclass

from megatron_ttt.models.config import TTTModelConfig
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


@dataclass(frozen=True)
class States:
    parameters: float
    """Working weights (bf16 or fp32); 1/N of them under ZeRO-3."""
    gradients: float
    """Working gradients plus, under bf16, the fp32 gradients the optimizer steps on."""
    optimizer: float
    """fp32 master weights and Adam's two moments (1/N of them from ZeRO-1 on)."""


def model_states(model: TTTModelConfig, layout: Layout) -> States:
    """Bytes of parameters, gradients and optimizer states on one rank."""
    psi, n, z, e = local_parameters(model, layout.tp), layout.dp, layout.zero, layout.act_bytes
    params = e * psi / (n if z == 3 else 1)
    working_grads = e * psi / (n if z >= 2 else 1)
    # Stage 0 bf16 (DeepSpeed's BF16_Optimizer) keeps a whole fp32 gradient copy; the ZeRO
    # optimizers keep the fp32 gradient of the owned partition; stage 0 fp32 steps on .grad itself.
    if z == 0:
        fp32_grads = 4 * psi if e == 2 else 0
    else:
        fp32_grads = 4 * psi / n
    master = (4 * psi if e == 2 else 0) if z == 0 else 4 * psi / n
    return States(params, working_grads + fp32_grads, master + 8 * psi / (n if z >= 1 else 1))


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
    """Bytes per GPU at the peak of a step (the start of the last micro-batch's backward)."""

    parameters: float
    gradients: float
    optimizer: float
    ttt_activations: float
    """The TTT inner loop's saved tensors, as configured."""
    ttt_activations_no_time_ckpt: float
    """The same without time-axis checkpointing (for comparison)."""
    block_activations: float
    """Everything else the layers keep (norms, projections, post-norm, MLP)."""
    head_activations: float
    """Final norm, head and loss, including their momentary peak inside the loss."""
    recompute: float
    """The largest recomputation alive in the backward (one block or one time-axis group)."""
    buffers: float
    """DeepSpeed's ZeRO buckets."""
    fragmentation: float
    """Allocator margin plus the memory outside it (CUDA context, NCCL)."""

    @property
    def allocated(self) -> float:
        """What the allocator hands out at the peak (the measured peak's counterpart)."""
        return (self.parameters + self.gradients + self.optimizer + self.ttt_activations + self.block_activations
                + self.head_activations + self.recompute + self.buffers)

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
        model.num_layers * tokens * activations.inner_loop_bytes(model, layout))
    head = stored["head"] + tokens * activations.head_transient_bytes(model, layout)
    partial = Memory(states.parameters, states.gradients, states.optimizer, stored["ttt"], no_ckpt,
                     stored["blocks"], head, activations.recompute_transient_bytes(model, layout),
                     buffer_bytes(model, layout, assume), 0.0)
    margin = assume.fragmentation * partial.allocated + assume.cuda_context_gib * GIB if on_gpu else 0.0
    return Memory(**{**partial.__dict__, "fragmentation": margin})
