"""lm-evaluation-harness: the adapter's log-likelihoods equal `mttt eval logprobs`, documents
scored in cache-carrying chunks equal one forward, the shipped example tasks (one per request
type) and the task docs/eval.md writes run end to end through `mttt eval harness`."""

import fnmatch
import json
import re
import shlex
import sys
import tomllib
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
from megatron_ttt.eval.harness_run import EXAMPLES, load_tasks
from megatron_ttt.models import scoring
from tests.distributed import run_distributed
from tests.eval.conftest import eval_command, loaded_model

ROOT = Path(__file__).parents[2]
EXAMPLE_TASKS = ["mttt_tiny_choice", "mttt_tiny_copy", "mttt_tiny_text"]
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


def own_task_from_docs() -> tuple[dict[str, str], list[str]]:
    """docs/eval.md "Writing your own task": its files (path -> text) and its command's arguments."""
    docs = (ROOT / "docs" / "eval.md").read_text()
    section = docs.split("### Writing your own task")[1].split("\n#")[0]
    files = dict(re.findall(r"`(my_tasks/[\w.]+)`:\n\n```\w*\n(.*?)```", section, re.S))
    (command,) = re.findall(r"^mttt (eval harness .*)$", section, re.M)
    return files, shlex.split(command)


def test_examples_and_the_documented_task_run_end_to_end(eval_data, tmp_path, monkeypatch, capsys):
    files, command = own_task_from_docs()
    assert set(files) == {"my_tasks/my_choice.jsonl", "my_tasks/my_choice.yaml"}
    monkeypatch.chdir(tmp_path)  # as the docs run it; the task reads its data next to its YAML
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    options = dict(zip(command[2::2], command[3::2]))
    assert set(options) == {"--checkpoint", "--include-path", "--tasks"}
    # The examples need no --include-path: they run with the documented task in one harness run.
    tasks = ",".join(EXAMPLE_TASKS + [options["--tasks"]])
    args = eval_command("harness", eval_data, "--include-path", options["--include-path"], "--tasks", tasks,
                        "--output", "out", "--batch-size", "4")
    assert main(args) == 0
    printed = capsys.readouterr().out
    for line in ("mttt_tiny_choice: acc ", "mttt_tiny_copy: exact_match ", "mttt_tiny_text: word_perplexity ",
                 "my_choice: acc "):
        assert line in printed
    (folder,) = (tmp_path / "out").iterdir()  # named after the checkpoint, as the harness names a local model
    assert folder.name.endswith("model") and str(eval_data.model_dir.parent.name) in folder.name
    results = json.loads(next(folder.glob("results_*.json")).read_text())["results"]
    assert 0 <= results["mttt_tiny_choice"]["acc,none"] <= 1 and 0 <= results["my_choice"]["acc,none"] <= 1
    assert 0 <= results["mttt_tiny_copy"]["exact_match,remove_whitespace"] <= 1
    assert np.isfinite(results["mttt_tiny_text"]["word_perplexity,none"])
    assert {p.name.split("_2")[0] for p in folder.glob("samples_*.jsonl")} == {f"samples_{t}" for t in tasks.split(",")}


def test_the_choice_example_scores_each_choice_after_one_space(adapter):
    """lm-eval joins context and choice with target_delimiter " ": a choice of its own leading
    space would be scored after two, as tokens a sentence never has."""
    from lm_eval.tasks import TaskManager

    (task,) = load_tasks(TaskManager(include_path=[EXAMPLES], include_defaults=False), ["mttt_tiny_choice"])
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests()
    assert len(task.instances) == sum(len(doc["choices"]) for doc in task.test_docs())
    for instance in task.instances:
        context, choice = instance.args
        assert not context[-1].isspace() and choice[0] == " " and not choice[1].isspace(), (context, choice)
        head, tail = adapter.encode_pair(context, choice)
        assert head + tail == [adapter.prefix_id] + adapter.tokenizer.encode([context + choice])[0]
        assert adapter.tokenizer.decode(tail) == choice[1:]  # the choice's own pieces, nothing else


def test_a_missing_data_file_names_the_task_and_its_yaml(tmp_path):
    from lm_eval.tasks import TaskManager

    (tmp_path / "text.yaml").write_text((EXAMPLES / "mttt_tiny_text.yaml").read_text())  # no JSON Lines beside it
    manager = TaskManager(include_path=[tmp_path], include_defaults=False)
    with pytest.raises(UserInputError, match=rf"task mttt_tiny_text \({tmp_path}/text.yaml\): .*mttt_tiny_text.jsonl"
                                             r".*relative data_files path is read from the YAML's folder"):
        load_tasks(manager, ["mttt_tiny_text"])


def test_a_tag_builds_each_of_its_tasks_in_its_own_folder(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    for task in EXAMPLE_TASKS:  # the examples, each in a folder of its own, tagged alike
        (tmp_path / task).mkdir()
        for suffix in (".yaml", ".jsonl"):
            (tmp_path / task / f"{task}{suffix}").write_text((EXAMPLES / f"{task}{suffix}").read_text())
        with (tmp_path / task / f"{task}.yaml").open("a") as yaml_file:
            yaml_file.write("tag: mttt_tiny\n")
    monkeypatch.chdir(tmp_path)
    tasks = load_tasks(TaskManager(include_path=[tmp_path], include_defaults=False), ["mttt_tiny"])
    assert sorted(t.task_name for t in tasks) == EXAMPLE_TASKS and all(t.test_docs() for t in tasks)


def test_list_examples_names_every_example_and_the_package_ships_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "harness", "--list-examples"])  # no --checkpoint or --tasks needed
    assert exit_.value.code == 0
    *names, folder = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in names] == EXAMPLE_TASKS and str(EXAMPLES) in folder
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in EXAMPLES.iterdir():  # every file of the folder is package data, so a wheel carries it
        assert any(fnmatch.fnmatch(f"{EXAMPLES.name}/{path.name}", g) for g in shipped["megatron_ttt.eval"]), path


@pytest.mark.parametrize("change, message", [
    (["--tasks", "no_such_task"], r"unknown task\(s\) no_such_task: not in lm-eval's registry, the examples "
                                  r"\(--list-examples\) or in a folder of yours"),
    (["--include-path", "/nonexistent"], r"--include-path /nonexistent is not a directory"),
    (["--batch-size", "0"], r"--batch-size 0 and --max-length None must be at least 1"),
])
def test_bad_tasks_are_named(eval_data, capsys, change, message):
    values = {"--checkpoint": str(eval_data.model_dir), "--data": str(eval_data.manifest_path),
              "--tasks": "mttt_tiny_choice"} | dict([change])
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
