"""A training layout: how the model, the batch and the checkpointing are laid over the GPUs."""

from dataclasses import dataclass

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.run_options import check_time_checkpoint_group


@dataclass(frozen=True)
class Layout:
    nodes: int
    """Machines."""
    gpus_per_node: int
    """Accelerators (ranks) per machine."""
    tp: int = 1
    """Tensor-parallel size (heads and vocabulary split); the rest of the world is data parallel."""
    zero: int = 0
    """DeepSpeed ZeRO stage over the data-parallel group."""
    seq_len: int = 2048
    """Tokens per sample."""
    micro_batch: int = 1
    """Samples per rank per forward/backward."""
    global_batch_tokens: int = 524288
    """Tokens per optimizer step over all ranks (sets the gradient accumulation)."""
    time_checkpoint_group: int = 0
    """Time-axis checkpoint group G in mini-batches (0: off)."""
    block_ckpt: bool = False
    """Recompute every block in the backward."""
    dtype: str = "bf16"
    """bf16 (mixed precision, fp32 master weights) or fp32."""
    sequence_parallel: bool = True
    """Sequence parallelism outside the mixers and MLPs (only with tp > 1)."""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        return self.world // self.tp

    @property
    def sp(self) -> int:
        """The factor the sequence is split by outside the mixers and MLPs."""
        return self.tp if self.sequence_parallel and self.tp > 1 else 1

    @property
    def act_bytes(self) -> int:
        """Bytes of an activation and of a working parameter."""
        return 2 if self.dtype == "bf16" else 4

    @property
    def accumulation(self) -> int:
        return self.global_batch_tokens // (self.micro_batch * self.dp * self.seq_len)

    @property
    def micro_tokens(self) -> int:
        """Tokens of one rank's micro-batch."""
        return self.micro_batch * self.seq_len


def check(layout: Layout, model: TTTModelConfig) -> None:
    """UserInputError naming every option that cannot work with this model."""
    problems = []
    positive = {"--nodes": layout.nodes, "--gpus-per-node": layout.gpus_per_node, "--tp": layout.tp,
                "--seq-len": layout.seq_len, "--micro-batch": layout.micro_batch}
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
    if layout.world % layout.tp:
        problems.append(f"--tp {layout.tp} does not divide the {layout.world} GPUs")
    if model.num_heads % layout.tp or model.vocab_size % layout.tp:
        problems.append(f"--tp {layout.tp} does not divide the {model.num_heads} heads and vocabulary {model.vocab_size}")
    if layout.sp > 1 and layout.seq_len % layout.tp:
        problems.append(f"--seq-len {layout.seq_len} is not divisible by --tp {layout.tp} (sequence parallel)")
    per_step = layout.micro_batch * layout.dp * layout.seq_len
    if not problems and (layout.global_batch_tokens < per_step or layout.global_batch_tokens % per_step):
        problems.append(f"--global-batch-tokens {layout.global_batch_tokens} is not a multiple of micro-batch x "
                        f"data-parallel x seq-len = {layout.micro_batch} x {layout.dp} x {layout.seq_len} = {per_step}")
    if problems:
        raise UserInputError("; ".join(problems))
