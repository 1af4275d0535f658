"""A training layout: how the model, the batch and the checkpointing are laid over the GPUs."""

from dataclasses import dataclass

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.parallel.layout import FLAG_NAMES, Batch, ParallelLayout, layout_problems
from megatron_ttt.run_options import check_time_checkpoint_group


@dataclass(frozen=True)
class Layout:
    nodes: int
    """Machines."""
    gpus_per_node: int
    """Accelerators (ranks) per machine."""
    tp: int = 1
    """Tensor-parallel size (heads and vocabulary split); the world over tp x cp is data parallel."""
    cp: int = 1
    """Context-parallel size: each sample's sequence split over cp ranks outside the mixers (inside,
    an all-to-all gives each rank whole sequences of heads / (tp x cp) heads)."""
    zero: int = 0
    """DeepSpeed ZeRO stage over the data-parallel group."""
    seq_len: int = 2048
    """Tokens per sample."""
    micro_batch: int = 1
    """Samples per rank per forward/backward."""
    global_batch_tokens: int = 524288
    """Tokens per optimizer step over all ranks (sets the gradient accumulation)."""
    time_checkpoint_group: int = 0
    """Time-axis checkpoint group G in mini-batches (LaCT layers: chunks; 0: off)."""
    block_ckpt: bool = False
    """Recompute every block in the backward."""
    dtype: str = "bf16"
    """bf16 (mixed precision, fp32 master weights) or fp32."""
    sequence_parallel: bool = True
    """Sequence parallelism outside the mixers and MLPs (only with tp > 1)."""
    optimizer: str = "adamw"
    """adamw, or muon: one fp32 momentum for each hidden matrix instead of Adam's two moments."""

    @property
    def parallel(self) -> ParallelLayout:
        return ParallelLayout(self.tp, self.sequence_parallel, self.cp, self.zero, self.world)

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        return self.parallel.data_parallel

    @property
    def zero_ranks(self) -> int:
        """The ranks DeepSpeed averages gradients and partitions ZeRO states over: DP x CP."""
        return self.dp * self.cp

    @property
    def act_bytes(self) -> int:
        """Bytes of an activation and of a working parameter."""
        return 2 if self.dtype == "bf16" else 4

    @property
    def accumulation(self) -> int:
        return self.global_batch_tokens // (self.micro_batch * self.dp * self.seq_len)

    @property
    def micro_tokens(self) -> int:
        """Tokens of one rank's micro-batch: its 1/cp of every sample's sequence. Inside the mixers
        it holds cp times as many tokens of 1/cp of the heads: the same bytes per token over tp."""
        return self.micro_batch * self.seq_len // self.cp


def check(layout: Layout, model: TTTModelConfig) -> None:
    """UserInputError naming every option that cannot work with this model."""
    problems = []
    positive = {"--nodes": layout.nodes, "--gpus-per-node": layout.gpus_per_node, "--tp": layout.tp,
                "--cp": layout.cp, "--seq-len": layout.seq_len, "--micro-batch": layout.micro_batch}
    problems += [f"{flag} {value} must be >= 1" for flag, value in positive.items() if value < 1]
    if problems:
        raise UserInputError("; ".join(problems))
    if layout.zero not in (0, 1, 2, 3):
        problems.append(f"--zero {layout.zero}: choose 0, 1, 2 or 3")
    if layout.dtype not in ("bf16", "fp32"):
        problems.append(f"--dtype {layout.dtype!r}: choose bf16 or fp32")
    try:
        check_time_checkpoint_group(layout.time_checkpoint_group)
    except ValueError as exc:
        problems.append(f"--time-checkpoint-group: {exc}")
    problems += layout_problems(layout.parallel, model, Batch(layout.seq_len, layout.micro_batch,
                                                              layout.global_batch_tokens), FLAG_NAMES)
    if model.layer_type == "lact" and model.lact_heads % (layout.tp * layout.cp):
        problems.append(f"--tp {layout.tp} x --cp {layout.cp} does not divide the {model.lact_heads} fast-weight heads "
                        "(--lact-heads) of the LaCT layers")
    if problems:
        raise UserInputError("; ".join(problems))
