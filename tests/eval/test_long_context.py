"""Long-context retrieval: prompts of exact lengths with the needle where asked, scores equal to
one full forward, reproducible grids, the report's files, and an untrained model at chance."""

import csv
import json
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from megatron_ttt.cli import main
from megatron_ttt.data import Tokenizer
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.long_context import Trial, TrialBuilder, corpus_text, needle_texts, score
from megatron_ttt.eval.long_context_run import check_trained_length
from megatron_ttt.models import scoring
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.scoring import target_logprobs
from tests.distributed import run_distributed
from tests.eval.conftest import MODEL, eval_command, loaded_model

VOCAB = 600
"""The test tokenizer's pieces: greedy decoding draws only these (the model's 640 are padded)."""


@pytest.fixture(scope="module")
def builder(eval_data):
    return TrialBuilder(Tokenizer(eval_data.tokenizer_path), corpus_text(), seed=3)


@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_prompts_have_the_length_and_the_needle_where_asked(builder, task):
    for length in (97, 300):
        for depth in (0.0, 0.5, 1.0):
            trial = builder.trial(task, length, depth, 0)
            needle, question, answer = (builder.encode(t) for t in needle_texts(
                task, random.Random(f"3/{task}/{length}/{depth}/0")))  # the builder's draw for this trial
            filler = length - len(builder.prefix) - len(needle) - len(question)
            assert len(trial.prompt) == length and trial.prompt[0] == builder.prefix[0] and trial.answer == answer
            longest_sentence = max(map(len, builder.sentences(task)))
            assert abs(trial.needle_at - len(builder.prefix) - depth * filler) <= longest_sentence
            assert trial.prompt[trial.needle_at:trial.needle_at + len(needle)] == needle
            before = builder.tokenizer.decode(trial.prompt[1:trial.needle_at]).rstrip()
            assert before == "" or before.endswith("."), before  # between sentences
            assert trial.prompt[-len(question):] == question
    again = TrialBuilder(builder.tokenizer, builder.corpus, seed=3)
    assert builder.trial(task, 300, 0.5, 1) == again.trial(task, 300, 0.5, 1)
    assert builder.trial(task, 300, 0.5, 1).answer != builder.trial(task, 300, 0.5, 2).answer


def one_forward(model: TTTLanguageModel, trial: Trial) -> tuple[float, bool]:
    """The answer's float64 log-probability and whether greedy decoding yields it, from one forward
    over prompt and answer (no cache, no chunks)."""
    with torch.no_grad():
        logits = model(torch.tensor([trial.prompt + trial.answer]))[0, len(trial.prompt) - 1:-1]
    answer = torch.tensor(trial.answer)
    return (target_logprobs(logits, answer, torch.float64).sum().item(),
            bool((logits[:, :VOCAB].argmax(-1) == answer).all()))


def test_scores_equal_one_forward_over_prompt_and_answer(eval_data, builder, monkeypatch):
    monkeypatch.setattr(scoring, "PREFILL_CHUNK", 13)  # chunks that cut TTT mini-batches of 8
    with loaded_model(eval_data.model_dir) as (model, _):
        for task in ("passkey", "needle"):
            trial = builder.trial(task, 150, 0.5, 0)
            got, (logprob, exact) = score(model, trial, VOCAB), one_forward(model, trial)
            assert abs(got.logprob - logprob) <= 1e-5 * abs(logprob)
            assert got.exact == exact


def expected_cells(eval_data, lengths: list[int], depths: list[float], trials: int) -> dict[tuple, dict]:
    """Per (task, length, depth) of the command's grid at seed 0: accuracy, the answer's mean
    log-probability and its mean per token, each trial scored by one forward."""
    builder = TrialBuilder(Tokenizer(eval_data.tokenizer_path), corpus_text(), seed=0)
    cells = {}
    with loaded_model(eval_data.model_dir) as (model, _):
        for task in ("passkey", "needle"):
            for length in lengths:
                for depth in depths:
                    mine = [builder.trial(task, length, depth, i) for i in range(trials)]
                    logprobs, exact = zip(*(one_forward(model, t) for t in mine))
                    answer_tokens = np.mean([len(t.answer) for t in mine])
                    cells[task, length, depth] = dict(accuracy=np.mean(exact), answer_logprob=np.mean(logprobs),
                                                      answer_logprob_per_token=np.mean(logprobs) / answer_tokens)
    return cells


def test_the_command_writes_the_grid_and_an_untrained_model_is_at_chance(eval_data, tmp_path, capsys):
    out = tmp_path / "lc"
    args = eval_command("long-context", eval_data, "--lengths", "128,256", "--depths", "0,0.5,1", "--trials", "2",
                        "--out", str(out))
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "long_context.csv").open()))
    expected = expected_cells(eval_data, [128, 256], [0.0, 0.5, 1.0], trials=2)
    assert [(r["task"], int(r["length"]), float(r["depth"])) for r in rows] == list(expected)
    for row, want in zip(rows, expected.values()):
        assert int(row["trials"]) == 2 and float(row["accuracy"]) == want["accuracy"]
        for key in ("answer_logprob", "answer_logprob_per_token"):
            assert float(row[key]) == pytest.approx(want[key], rel=1e-5), (row, key)
    # Chance for a 5- or 7-digit number is 1e-5 or less: an untrained model retrieves nothing.
    assert all(want["accuracy"] == 0 for want in expected.values())
    for task in ("passkey", "needle"):
        assert f"{task}: accuracy 0.000 over 12 prompts (2 lengths x 3 depths x 2)" in printed
        assert (out / f"long_context_{task}.png").read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((out / "long_context.json").read_text())
    assert settings["checkpoint"] == str(eval_data.model_dir) and settings["seed"] == 0
    assert (settings["lengths"], settings["depths"], settings["trials"]) == ([128, 256], [0.0, 0.5, 1.0], 2)
    for task in ("passkey", "needle"):
        assert settings["examples"][task] == list(needle_texts(task, random.Random(0)))
    assert main(args) == 0
    assert list(csv.DictReader((out / "long_context.csv").open())) == rows  # reproducible


@pytest.mark.parametrize("change, message", [
    (["--lengths", "20"], r"--lengths 20: a passkey prompt needs more than \d+ tokens"),
    (["--depths", "0,1.5"], r"--depths \[1.5\]: a depth is a fraction"),
    (["--tasks", "passkey,recall"], r"--tasks recall: choose from passkey, needle"),
    (["--depths", ""], r"--lengths, --depths and --tasks each need at least one value"),
    (["--trials", "0"], r"--trials 0: at least one prompt per cell"),
])
def test_bad_grids_are_named(eval_data, capsys, change, message):
    args = eval_command("long-context", eval_data, "--trials", "1", "--lengths", "128", *change)
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_lengths_beyond_training_are_refused_only_for_full_attention(builder):
    trials = [builder.trial("passkey", 128, 0.5, 0)]
    reach = 128 + len(trials[0].answer) - 1
    hybrid = replace(MODEL, num_layers=2, layer_pattern="T*")
    with pytest.raises(UserInputError, match=f"reads {reach} positions, more than the 128 this checkpoint"):
        check_trained_length(trials, hybrid, trained=128)
    check_trained_length(trials, hybrid, trained=reach)
    check_trained_length(trials, replace(hybrid, layer_pattern="TW"), trained=64)
    check_trained_length(trials, MODEL, trained=64)
    check_trained_length(trials, hybrid, trained=None)


def tp_scores(rank: int, world: int, store, tp: int, model_dir: str, trials: list) -> list:
    with loaded_model(model_dir, tp, store=store) as (model, _):
        return [score(model, trial, VOCAB) for trial in trials]


@pytest.mark.slow
def test_tensor_parallel_scores_equal_one_process(eval_data, builder):
    trials = [builder.trial(task, 150, 0.5, 0) for task in ("passkey", "needle")]
    one = tp_scores(0, 1, None, 1, str(eval_data.model_dir), trials)
    for ranks in run_distributed(2, tp_scores, 2, str(eval_data.model_dir), trials):
        for a, b in zip(ranks, one):
            assert a.exact == b.exact and abs(a.logprob - b.logprob) <= 1e-5 * abs(b.logprob)
