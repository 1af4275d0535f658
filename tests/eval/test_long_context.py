"""Long-context retrieval: prompts of exact lengths with the needle where asked, scores equal to
one full forward, reproducible grids, the report's files, and an untrained model at chance."""

import csv
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.cli import main
from megatron_ttt.data import Tokenizer
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval import long_context
from megatron_ttt.eval.long_context import TrialBuilder, corpus_text, needle_texts, score
from megatron_ttt.eval.long_context_run import check_trained_length
from megatron_ttt.parallel.setup import ModelParallel, destroy_parallel, init_parallel
from tests.distributed import run_distributed
from tests.eval.conftest import MODEL


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


def test_scores_equal_one_forward_over_prompt_and_answer(eval_data, builder, monkeypatch):
    init_parallel(ModelParallel())
    try:
        model = load_model(eval_data.model_dir)
        monkeypatch.setattr(long_context, "PREFILL_CHUNK", 13)  # chunks that cut TTT mini-batches of 8
        for task in ("passkey", "needle"):
            trial = builder.trial(task, 150, 0.5, 0)
            got = score(model, trial, builder.tokenizer.vocab_size)
            tokens = torch.tensor([trial.prompt + trial.answer])
            logits = model(tokens)[0, len(trial.prompt) - 1:-1].double()
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(trial.answer)[:, None]).sum().item()
            assert abs(got.logprob - expected) <= 1e-5 * abs(expected)
            assert got.exact == bool((logits.argmax(-1) == torch.tensor(trial.answer)).all())
    finally:
        destroy_parallel()


def test_the_command_writes_the_grid_and_an_untrained_model_is_at_chance(eval_data, tmp_path, capsys):
    out = tmp_path / "lc"
    args = ["eval", "long-context", "--checkpoint", str(eval_data.model_dir), "--data", str(eval_data.manifest_path),
            "--lengths", "128,256", "--depths", "0,0.5,1", "--trials", "2", "--out", str(out)]
    assert main(args) == 0
    assert "passkey: accuracy 0.000 over 12 prompts" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "long_context.csv").open()))
    assert len(rows) == 2 * 2 * 3 and {r["task"] for r in rows} == {"passkey", "needle"}
    # Chance for a 5- or 7-digit number is 1e-5 or less: an untrained model retrieves nothing.
    assert all(float(r["accuracy"]) == 0 and float(r["answer_logprob"]) < 0 for r in rows)
    for name in ("long_context_passkey.png", "long_context_needle.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((out / "long_context.json").read_text())
    assert settings["seed"] == 0 and settings["lengths"] == [128, 256]
    assert "The pass key is" in settings["examples"]["passkey"][0]
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
    args = ["eval", "long-context", "--checkpoint", str(eval_data.model_dir), "--data", str(eval_data.manifest_path),
            "--trials", "1", "--lengths", "128"] + change
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
    init_parallel(ModelParallel(tp), store=store)
    try:
        model = load_model(Path(model_dir))
        return [score(model, trial, 600) for trial in trials]
    finally:
        destroy_parallel()


@pytest.mark.slow
def test_tensor_parallel_scores_equal_one_process(eval_data, builder):
    trials = [builder.trial(task, 150, 0.5, 0) for task in ("passkey", "needle")]
    one = tp_scores(0, 1, None, 1, str(eval_data.model_dir), trials)
    for ranks in run_distributed(2, tp_scores, 2, str(eval_data.model_dir), trials):
        for a, b in zip(ranks, one):
            assert a.exact == b.exact and abs(a.logprob - b.logprob) <= 1e-5 * abs(b.logprob)
