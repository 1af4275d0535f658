"""The one way every eval command gets its model: the source as the user names it (a model
directory, a training checkpoint or a run directory) resolved and its config read, with the
tokenizer when the command needs one, all checked before any process group starts; then, inside
the process groups, the model built, its weights loaded, in eval mode."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.checkpoint.checksums import verify_model_source
from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.checkpoint.run_dir import read_model_config, resolve_model_source
from megatron_ttt.data import Tokenizer
from megatron_ttt.eval.prompt import resolve_tokenizer
from megatron_ttt.models.compile import compile_blocks, compile_seconds
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups


@dataclass(frozen=True)
class LoadedModel:
    model: TTTLanguageModel
    """In eval mode, split over `groups`."""
    groups: ProcessGroupCollection
    rank0: bool
    """Whether this process reports (prints, writes files, shows progress)."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    """The directory holding the model (a run directory resolved to its latest checkpoint)."""
    config: TTTModelConfig
    tokenizer: Tokenizer | None
    """The tokenizer when the command asked for one (`open_model_source`)."""

    @contextmanager
    def load(self, tensor_parallel: int = 1, context_parallel: int = 1,
             compiled: bool = False) -> Iterator[LoadedModel]:
        """The process groups (TP x CP per model replica, the rest data parallel) and the model on
        them, for the body of a `with`; the groups are torn down after it. compiled: the blocks
        compiled (models/compile.py), the time spent compiling printed after the body."""
        with parallel_groups(ParallelLayout(tensor_parallel, context_parallel=context_parallel)) as groups:
            model = load_model(self.path, groups).eval()
            if compiled:
                compile_blocks(model)
            loaded = LoadedModel(model, groups, torch.distributed.get_rank() == 0)
            yield loaded
            if compiled and loaded.rank0:
                print(f"compiled blocks: {compile_seconds():.1f} s compiling", flush=True)


def open_model_source(checkpoint: str | Path, with_tokenizer: bool = False, tokenizer: str | None = None,
                      data: str | None = None) -> ModelSource:
    """`--checkpoint` resolved and its model config read; `with_tokenizer`: also the tokenizer
    (`--tokenizer`, else the model directory's, else the one the `--data` manifest names), which
    must fit the model's vocabulary. Before any process group, so bad inputs (a damaged
    checkpoint among them) stop early."""
    path = resolve_model_source(Path(checkpoint))
    verify_model_source(path)
    config = read_model_config(path)
    found = resolve_tokenizer(path, tokenizer, data, config.vocab_size) if with_tokenizer else None
    return ModelSource(path, config, found)
