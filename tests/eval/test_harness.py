"""lm-evaluation-harness: the adapter's log-likelihoods equal `mttt eval logprobs`, documents
scored in cache-carrying chunks equal one forward, and local tasks of each request type run end
to end through `mttt eval harness`."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from megatron_ttt.cli import main
from megatron_ttt.data import Tokenizer
from megatron_ttt.eval import harness
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.generate import generate
from megatron_ttt.eval.harness import HarnessModel
from megatron_ttt.models import scoring
from tests.distributed import run_distributed
from tests.eval.conftest import eval_command, loaded_model

TASKS = Path(__file__).parent / "harness_tasks"
PAIRS = [("the model learns at test", " time"), ("", "the model"), ("a gradient step on its hidden ", "state every"),
         ("every mini batch the model learns at test time by a gradient step on", " its hidden state")]


@pytest.fixture
def adapter(eval_data):
    with loaded_model(eval_data.model_dir) as (model, _):
        yield HarnessModel(model, Tokenizer(eval_data.tokenizer_path), batch_size=3, show_progress=False)


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_mttt_eval_logprobs(eval_data, tmp_path):
    with loaded_model(eval_data.model_dir) as (model, _):
        lm = HarnessModel(model, Tokenizer(eval_data.tokenizer_path), batch_size=3, show_progress=False)
        got = lm.loglikelihood(requests("loglikelihood", PAIRS))
        encoded = [lm.encode_pair(*pair) for pair in PAIRS]
        logits = [lm.model(torch.tensor([head + tail]))[0, len(head) - 1:-1] for head, tail in encoded]
    for (head, tail), (logprob, greedy), row in zip(encoded, got, logits):
        assert head[0] == lm.prefix_id and tail
        np.save(tmp_path / "ids.npy", np.array([head + tail]))
        args = ["eval", "logprobs", "--checkpoint", str(eval_data.model_dir), "--input", str(tmp_path / "ids.npy"),
                "--output", str(tmp_path / "lp.npy")]
        assert main(args) == 0
        expected = np.load(tmp_path / "lp.npy")[0, -len(tail):].astype(np.float64).sum()
        assert abs(logprob - expected) <= 1e-5 * abs(expected), (head, tail, logprob, expected)
        assert greedy == bool((row.argmax(-1) == torch.tensor(tail)).all())


def test_max_length_cuts_the_context_only(adapter):
    context, continuation = "the model learns at test time by a gradient step on its hidden", " state every"
    head, tail = adapter.encode_pair(context, continuation)
    whole = adapter.loglikelihood(requests("loglikelihood", [(context, continuation)]))[0]
    adapter.max_length = len(head) + len(tail) - 1  # everything fits: the same score
    assert adapter.loglikelihood(requests("loglikelihood", [(context, continuation)]))[0] == whole
    adapter.max_length = len(tail) + 2
    assert adapter._truncate(head, tail) == head[-3:] + tail
    adapter.max_length = len(tail) - 1
    with pytest.raises(UserInputError, match=f"continuation of {len(tail)} tokens is longer than --max-length"):
        adapter.loglikelihood(requests("loglikelihood", [(context, continuation)]))


def test_a_word_keeps_its_space_in_the_continuation(adapter):
    head, tail = adapter.encode_pair("the model learns at ", "test")
    assert adapter.encode_pair("the model learns at", " test") == (head, tail)
    assert adapter.tokenizer.decode(tail) == "test" and len(head) > 1


def test_a_document_scored_in_chunks_equals_one_forward(adapter, monkeypatch):
    ids = adapter.tokenizer.encode(["every mini batch the model learns at test time by a gradient step " * 3])[0]
    tokens = torch.tensor([[adapter.prefix_id] + ids])
    whole = torch.log_softmax(adapter.model(tokens)[0, :-1].float(), -1).gather(-1, tokens[0, 1:, None]).sum()
    monkeypatch.setattr(scoring, "PREFILL_CHUNK", 7)  # chunks that cut TTT mini-batches of 8
    chunked = adapter.loglikelihood_rolling(requests("loglikelihood_rolling", [(adapter.tokenizer.decode(ids),)]))[0]
    assert abs(chunked - whole.item()) <= 1e-5 * abs(whole.item())


def test_generation_stops_at_the_stop_string(adapter, monkeypatch):
    generated = []  # new tokens per generation

    def counting(*args, **kwargs):
        out = generate(*args, **kwargs)
        generated.append(out.tokens.shape[1])
        return out

    monkeypatch.setattr(harness, "generate", counting)

    def text(**kwargs) -> str:
        return adapter.generate_until(requests("generate_until", [("the model learns", kwargs)]))[0]

    free = text(max_gen_toks=10)
    assert generated == [10] and len(free) >= 5  # greedy text, no EOS: all ten tokens
    # A stop string inside the free text: its first printable ASCII character after the start.
    stop = next(c for c in free[1:] if c.isascii() and c.isprintable())
    stopped = text(max_gen_toks=10, until=[stop])
    n = generated[-1]
    assert stopped and stopped == free[:free.index(stop)]  # the same text, cut where the stop string starts
    assert n < 10 and stop in text(max_gen_toks=n) and stop not in text(max_gen_toks=n - 1)  # stopped at once


def test_local_tasks_of_every_request_type_run_end_to_end(eval_data, tmp_path, capsys):
    out = tmp_path / "out"
    args = eval_command("harness", eval_data, "--tasks", "mttt_tiny_choice,mttt_tiny_copy,mttt_tiny_text",
                        "--include-path", str(TASKS), "--output", str(out), "--batch-size", "4")
    assert main(args) == 0
    printed = capsys.readouterr().out
    for line in ("mttt_tiny_choice: acc ", "mttt_tiny_copy: exact_match ", "mttt_tiny_text: word_perplexity "):
        assert line in printed
    (folder,) = out.iterdir()  # named after the checkpoint, as the harness names a local model
    assert folder.name.endswith("model") and str(eval_data.model_dir.parent.name) in folder.name
    results = json.loads(next(folder.glob("results_*.json")).read_text())["results"]
    assert 0 <= results["mttt_tiny_choice"]["acc,none"] <= 1 and 0 <= results["mttt_tiny_copy"]["exact_match,none"] <= 1
    assert np.isfinite(results["mttt_tiny_text"]["word_perplexity,none"])
    assert {p.name.split("_2")[0] for p in out.rglob("samples_*.jsonl")} == {
        "samples_mttt_tiny_choice", "samples_mttt_tiny_copy", "samples_mttt_tiny_text"}


@pytest.mark.parametrize("change, message", [
    (["--tasks", "no_such_task"], r"unknown task\(s\) no_such_task: not in lm-eval's registry or in"),
    (["--include-path", "/nonexistent"], r"--include-path /nonexistent is not a directory"),
    (["--batch-size", "0"], r"--batch-size 0 and --max-length None must be at least 1"),
])
def test_bad_tasks_are_named(eval_data, capsys, change, message):
    values = {"--checkpoint": str(eval_data.model_dir), "--data": str(eval_data.manifest_path),
              "--tasks": "mttt_tiny_choice", "--include-path": str(TASKS)} | dict([change])
    assert main(["eval", "harness"] + [x for kv in values.items() for x in kv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_missing_harness_names_the_extra(eval_data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    args = ["eval", "harness", "--checkpoint", str(eval_data.model_dir), "--tasks", "x"]
    assert main(args) == 2
    assert "pip install 'megatron-ttt[eval]'" in capsys.readouterr().err


def tp_loglikelihoods(rank: int, world: int, store, tp: int, model_dir: str, tokenizer: str) -> list:
    with loaded_model(model_dir, tp, store=store) as (model, _):
        lm = HarnessModel(model, Tokenizer(tokenizer), batch_size=2, show_progress=False)
        return lm.loglikelihood(requests("loglikelihood", PAIRS)) + [lm.document_logprob(list(range(3, 40)))]


@pytest.mark.slow
def test_tensor_parallel_requests_equal_one_process(eval_data):
    args = (str(eval_data.model_dir), str(eval_data.tokenizer_path))
    one = tp_loglikelihoods(0, 1, None, 1, *args)
    for ranks in run_distributed(2, tp_loglikelihoods, 2, *args):
        for a, b in zip(ranks[:-1], one[:-1]):
            assert a[1] == b[1] and abs(a[0] - b[0]) <= 1e-5 * abs(b[0])
        assert abs(ranks[-1] - one[-1]) <= 1e-5 * abs(one[-1])
