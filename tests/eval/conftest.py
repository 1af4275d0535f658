"""A tokenizer, a small prepared dataset and model directories made with them, once per session;
a saved model loaded in its own process groups; a command's arguments on that data."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.checkpoint.model_dir import load_model, save_model
from megatron_ttt.models.build import build_model
from megatron_ttt.data import Manifest
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from tests.data_prep.corpora import make_tokenizer, settings, write_corpus

SEQ_LEN = 32
MODEL = TTTModelConfig(vocab_size=640, hidden_size=32, num_heads=4, num_layers=2, intermediate_size=48,
                       mini_batch_size=8)
"""Vocabulary: the tokenizer's 600 rounded up (as training does), even for TP = 2."""


@dataclass(frozen=True)
class EvalData:
    manifest: Manifest
    manifest_path: Path
    tokenizer_path: Path
    model_dir: Path
    small_vocab_dir: Path
    """A model whose vocabulary (512) is smaller than the tokenizer's."""


def _save(cfg: TTTModelConfig, directory: Path, seed: int, groups) -> None:
    model = build_model(cfg, groups, init_seed=seed)
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial values where the init leaves constants
        for name, p in model.named_parameters():
            if "token_offset" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    save_model(model, directory)


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> EvalData:
    root = tmp_path_factory.mktemp("eval")
    tokenizer = make_tokenizer(root / "tokenizer")
    inputs = write_corpus(root / "in", files=2, docs_per_file=40)
    job = ShardJob(root / "ds", settings(tokenizer, inputs, seq_len=SEQ_LEN, val_fraction=0.3), workers=1)
    manifest = shard_corpus(job, show_progress=False)[0]
    with parallel_groups(ParallelLayout()) as groups:
        _save(MODEL, root / "model", 0, groups)
        _save(TTTModelConfig(**(MODEL.to_dict() | {"vocab_size": 512})), root / "small", 0, groups)
    return EvalData(manifest, root / "ds" / "manifest.json", tokenizer.path, root / "model", root / "small")


@contextmanager
def loaded_model(model_dir: Path | str, tensor_parallel: int = 1, context_parallel: int = 1,
                 store=None) -> Iterator[tuple[TTTLanguageModel, ProcessGroupCollection]]:
    """(model, process groups) of a saved model, in eval mode, inside its own process groups (a
    `run_distributed` rank passes its store), torn down after the `with`."""
    with parallel_groups(ParallelLayout(tensor_parallel, context_parallel=context_parallel), store=store) as groups:
        yield load_model(Path(model_dir), groups).eval(), groups


def eval_command(command: str, data: EvalData, *extra: str) -> list[str]:
    """`mttt eval COMMAND` on the session's model and dataset, then `extra`."""
    return ["eval", command, "--checkpoint", str(data.model_dir), "--data", str(data.manifest_path), *extra]
