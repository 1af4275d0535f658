"""The parallel layout of a run and the one check of what it asks of a model and a batch.

Plain Python (no torch), so the config, `mttt launch` and `mttt plan` check a layout before
anything is started, with the same rules the model build checks it by. Each caller names the
fields as its users know them (`parallel.tensor_parallel=2`, `--tp 2`, `tensor_parallel=2`).
"""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ParallelLayout:
    """How a run is laid over its processes: TP innermost, then CP, then DP."""

    tensor_parallel: int = 1
    """Ranks that split each layer's heads (and the vocabulary)."""
    sequence_parallel: bool = False
    """Split the sequence over the TP ranks outside the mixers and MLPs (only with tensor_parallel > 1)."""
    context_parallel: int = 1
    """Ranks that split each sample's sequence (inside the mixers, the heads): parallel/context.py."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage over the data-parallel (x CP) group: 0, 1, 2 or 3."""
    processes: int = 0
    """All ranks of the run; 0 where not known yet (a model built inside existing groups)."""

    @property
    def model_parallel(self) -> int:
        """Ranks that hold one replica of the model between them: TP x CP."""
        return self.tensor_parallel * self.context_parallel

    @property
    def data_parallel(self) -> int:
        return self.processes // self.model_parallel

    @property
    def sequence_parallel_split(self) -> int:
        """What sequence parallelism splits the sequence by: TP, where it is on and TP > 1; else 1."""
        return self.tensor_parallel if self.sequence_parallel and self.tensor_parallel > 1 else 1

    @property
    def sequence_split(self) -> int:
        """What the sequence is split by outside the mixers: CP, times TP under sequence parallel."""
        return self.context_parallel * self.sequence_parallel_split


class ModelShape(Protocol):
    """What the layout check reads of a model (models.config.TTTModelConfig has it)."""

    num_heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    layer_type: str
    lact_heads: int


@dataclass(frozen=True)
class FieldNames:
    """How a caller's users name each field: a format with one `{}` for the value."""

    tensor_parallel: str
    context_parallel: str
    seq_len: str = "seq_len={}"
    global_batch_tokens: str = "global_batch_tokens={}"
    processes: str = "{} processes"
    model: str = ""
    """Not a format: what names the model after "the 4 heads" (e.g. " of model.preset=tiny")."""


CONFIG_NAMES = FieldNames("parallel.tensor_parallel={}", "parallel.context_parallel={}", "data.seq_len={}",
                          "data.global_batch_tokens={}", "{} processes of this run")
FLAG_NAMES = FieldNames("--tp {}", "--cp {}", "--seq-len {}", "--global-batch-tokens {}", "{} GPUs")
BUILD_NAMES = FieldNames("tensor_parallel={}", "context_parallel={}")


@dataclass(frozen=True)
class Batch:
    """The batch a layout must split: tokens per sample, samples per rank and tokens per step."""

    seq_len: int
    micro_batch: int = 0
    """0: not checked."""
    global_batch_tokens: int = 0
    """0: not checked."""


def layout_problems(layout: ParallelLayout, model: ModelShape | None = None, batch: Batch | None = None,
                    names: FieldNames = BUILD_NAMES, check_vocab: bool = True) -> list[str]:
    """Everything `layout` cannot do with this model, this batch and its processes, in `names`'
    words. check_vocab False: the vocabulary is padded to the TP size later (a training config)."""
    tp, cp = names.tensor_parallel.format(layout.tensor_parallel), names.context_parallel.format(layout.context_parallel)
    sizes = {tp: layout.tensor_parallel, cp: layout.context_parallel}
    problems = [f"{name} must be at least 1" for name, size in sizes.items() if size < 1]
    if problems:
        return problems
    split = f"{tp} x {cp}"
    if layout.processes and layout.processes % layout.model_parallel:
        problems.append(f"{split} does not divide the {names.processes.format(layout.processes)} (the data-parallel "
                        "size is processes / (TP x CP))")
    if model is not None:
        problems += _model_problems(layout, model, tp, split, names.model, check_vocab)
    if batch is not None:
        problems += _batch_problems(layout, batch, names, tp, cp)
    return problems


def _model_problems(layout: ParallelLayout, model: ModelShape, tp: str, split: str, of_model: str,
                    check_vocab: bool) -> list[str]:
    problems = []
    if model.num_heads % layout.model_parallel:
        problems.append(f"{split} does not divide the {model.num_heads} heads{of_model}")
    if model.layer_type == "lact" and model.lact_heads % layout.model_parallel:
        problems.append(f"{split} does not divide the {model.lact_heads} fast-weight heads (lact_heads){of_model}")
    if model.kv_heads % layout.tensor_parallel:
        problems.append(f"{tp} does not divide the {model.kv_heads} key/value heads{of_model}")
    if model.intermediate_size % layout.tensor_parallel:
        problems.append(f"{tp} does not divide the MLP width {model.intermediate_size}{of_model}")
    if check_vocab and model.vocab_size % layout.tensor_parallel:
        problems.append(f"{tp} does not divide the vocabulary of {model.vocab_size}{of_model}")
    return problems


def _batch_problems(layout: ParallelLayout, batch: Batch, names: FieldNames, tp: str, cp: str) -> list[str]:
    problems = []
    if batch.seq_len % layout.sequence_split:
        over = cp + (f" x {tp} (sequence parallel)" if layout.sequence_parallel_split > 1 else "")
        problems.append(f"{names.seq_len.format(batch.seq_len)} does not split over {over}")
    if batch.global_batch_tokens and layout.processes and not layout.processes % layout.model_parallel:
        per_step = batch.micro_batch * layout.data_parallel * batch.seq_len
        if batch.global_batch_tokens < per_step or batch.global_batch_tokens % per_step:
            problems.append(
                f"{names.global_batch_tokens.format(batch.global_batch_tokens)} is not a multiple of micro-batch x "
                f"data-parallel size x seq-len = {batch.micro_batch} x {layout.data_parallel} x {batch.seq_len} = "
                f"{per_step}")
    return problems
