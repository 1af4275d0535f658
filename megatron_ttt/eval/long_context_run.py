"""`mttt eval long-context`: passkey and needle retrieval over a grid of lengths and depths."""

import argparse
import json
import random
from pathlib import Path

from tqdm import tqdm

from megatron_ttt.checkpoint.run_dir import RUN_CONFIG
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.long_context import (KEYS, PASSKEY_FILLER, TASKS, Trial, TrialBuilder, corpus_text,
                                            needle_texts, score)
from megatron_ttt.eval.long_context_report import write_report
from megatron_ttt.models.config import TTTModelConfig


def trained_length(checkpoint: Path) -> int | None:
    """The sequence length a training checkpoint was trained at (None for a model directory)."""
    path = checkpoint / RUN_CONFIG
    return json.loads(path.read_text())["data"]["seq_len"] if path.exists() else None


def check_grid(lengths: list[int], depths: list[float], tasks: list[str], trials: int) -> None:
    if not (lengths and depths and tasks):
        raise UserInputError("--lengths, --depths and --tasks each need at least one value")
    if unknown := sorted(set(tasks) - set(TASKS)):
        raise UserInputError(f"--tasks {','.join(unknown)}: choose from {', '.join(TASKS)}")
    if bad := [d for d in depths if not 0 <= d <= 1]:
        raise UserInputError(f"--depths {bad}: a depth is a fraction of the filler, from 0 (start) to 1 (end)")
    if bad := [n for n in lengths if n < 1]:
        raise UserInputError(f"--lengths {bad}: lengths are positive token counts")
    if trials < 1:
        raise UserInputError(f"--trials {trials}: at least one prompt per cell")


def check_trained_length(trials: list[Trial], model: TTTModelConfig, trained: int | None) -> None:
    """The answer's tokens follow the prompt: the last position read is length + answer - 1."""
    if trained is None or "attention" not in model.mixers:
        return
    longest = max(trials, key=lambda t: len(t.prompt) + len(t.answer))
    if (reach := len(longest.prompt) + len(longest.answer) - 1) > trained:
        raise UserInputError(f"--lengths {longest.length}: with its answer the model reads {reach} positions, more "
                             f"than the {trained} this checkpoint was trained on, and its full-attention layers "
                             f"(layer pattern {model.layer_pattern}) never saw positions beyond them; use shorter "
                             "lengths")


def settings(args: argparse.Namespace, checkpoint: Path, tokenizer_path: Path) -> dict:
    """What reproduces the report."""
    return {"checkpoint": str(checkpoint), "tokenizer": str(tokenizer_path), "tasks": args.tasks,
            "lengths": args.lengths, "depths": args.depths, "trials": args.trials, "seed": args.seed,
            "passkey_filler": PASSKEY_FILLER, "needle_filler": "the bundled corpus (Python language reference, "
            "pydoc_data.topics), from a seeded sentence", "needle_keys": list(KEYS),
            "examples": {task: needle_texts(task, random.Random(args.seed)) for task in args.tasks}}


def run_long_context(args: argparse.Namespace) -> int:
    check_grid(args.lengths, args.depths, args.tasks, args.trials)
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    tokenizer = source.tokenizer
    builder = TrialBuilder(tokenizer, corpus_text(), args.seed)
    trials = [builder.trial(task, length, depth, i) for task in args.tasks for length in args.lengths
              for depth in args.depths for i in range(args.trials)]
    # Lengths beyond the training context matter only where full attention sees them (its RoPE
    # positions were never trained there); TTT and window layers see the same positions at any length.
    check_trained_length(trials, source.config, trained_length(source.path))
    with source.load(args.tensor_parallel) as loaded:
        outcomes = [score(loaded.model, trial, tokenizer.vocab_size)
                    for trial in tqdm(trials, unit="prompt", disable=not loaded.rank0)]
    if loaded.rank0:
        paths = write_report(trials, outcomes, Path(args.out), settings(args, source.path, tokenizer.path))
        for task in args.tasks:
            mine = [o for t, o in zip(trials, outcomes) if t.task == task]
            print(f"{task}: accuracy {sum(o.exact for o in mine) / len(mine):.3f} over {len(mine)} prompts "
                  f"({len(args.lengths)} lengths x {len(args.depths)} depths x {args.trials}); heatmap {paths[task]}")
        print(f"cells: {paths['cells']}")
    return 0
