"""docs/quickstart.md as a newcomer types it: every `mttt` command of the page, in order, on two
corpora in its formats (the pretraining run shortened to a few steps)."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_ttt.cli import main
from megatron_ttt.data_prep.corpus import bundled_corpus
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents
from tests.training.runs import RUN_TIMEOUT, environment

PAGE = Path(__file__).parents[1] / "docs" / "quickstart.md"
SHORTER = ["train.steps=4", "data.global_batch_tokens=512", "data.micro_batch_size=4", "data.num_workers=0",
           "logging.interval=1", "logging.eval_interval=2", "logging.eval_batches=1", "checkpoint.interval=2",
           "logging.tensorboard=false"]


def page_commands() -> list[list[str]]:
    """The page's `mttt` commands (continuation lines joined), as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("mttt ")]


def write_corpora(directory: Path) -> None:
    """The page's two inputs, from the bundled text cut into paragraphs: release notes (JSON Lines,
    field `message`) and code (Parquet, column `content`)."""
    paragraphs = [p for path in bundled_corpus(directory / "bundled")
                  for doc in iter_documents(path, SourceOptions(), SourceStats()) for p in doc.split("\n\n")]
    notes, code = paragraphs[::2], paragraphs[1::2]
    with open(directory / "changelogs.jsonl", "w") as f:
        f.writelines(json.dumps({"package": "mttt", "version": f"0.{i}", "message": text}) + "\n"
                     for i, text in enumerate(notes))
    pq.write_table(pa.table({"path": [f"src/{i}.py" for i in range(len(code))], "content": code}),
                   directory / "code.parquet")


def test_the_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    write_corpora(tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = page_commands()
    assert [c[:2] for c in commands] == [
        ["data", "train-tokenizer"], ["data", "shard"], ["data", "shard"], ["pretrain", "run_dir=runs/first"],
        ["eval", "perplexity"], ["generate", "--checkpoint"], ["checkpoint", "verify"],
        ["convert", "mttt-to-mttt"], ["generate", "--checkpoint"]]
    for args in commands:
        if args[0] == "pretrain":  # its own process, as a user's run is
            run = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", *args, *SHORTER], env=environment(tmp_path),
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT)
            assert run.returncode == 0, run.stderr[-3000:]
            assert "train_loss_notes" in (tmp_path / "runs/first/metrics.jsonl").read_text()
            continue
        assert main(args) == 0, (args, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert re.search(r"changelogs\.jsonl: [\d,]+ documents\n.*code\.parquet: [\d,]+ documents", out)
    summary = (tmp_path / "eval/perplexity/perplexity.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in summary] == ["source", "notes", "code", "blend"]
    assert (tmp_path / "models/first/tokenizer.model").exists()
