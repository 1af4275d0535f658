import argparse
import logging
import subprocess
import sys
import warnings

import pytest

from megatron_ttt import __version__
from megatron_ttt.cli import build_parser, main, report
from megatron_ttt.console import quiet_libraries
from megatron_ttt.errors import UserInputError

COMMANDS = ("data", "pretrain", "convert", "checkpoint", "eval", "generate", "launch", "torchrun", "plan", "version")


def _subcommands() -> dict[str, str]:
    """The subcommands build_parser() registers, each with its help text."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert helps.keys() == action.choices.keys()
    return helps


def _flat(text: str) -> str:
    """Whitespace collapsed, so argparse's line wrapping does not matter."""
    return " ".join(text.split())


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"megatron-ttt {__version__} (torch ")


def test_help_lists_commands(capsys):
    commands = _subcommands()
    assert sorted(commands) == sorted(COMMANDS)
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = _flat(captured.out)
    assert out.startswith("usage: mttt [-h] [--verbose] COMMAND")
    for name, help_text in commands.items():
        assert help_text, f"{name} has no help text"
        assert f"{name} {_flat(help_text)}" in out, f"top-level help lacks {name!r}: {help_text!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mttt {command} "), out.splitlines()[:1]


@pytest.mark.parametrize("argv, message", [
    (["plan", "--preset", "bogus"], "mttt plan: error: --preset 'bogus': choose one of tiny, "),
    (["launch", "pretrain", "--dry-run", "--profile", "/nonexistent/profile.yaml"],
     "mttt launch: error: cannot read profile /nonexistent/profile.yaml: "),
])
def test_user_error_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err


def test_user_error_exit_status_as_a_process():
    result = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "plan", "--vocab-size", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "mttt plan: error: --vocab-size 0 must be >= 1"


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_the_libraries_warnings_are_hidden_and_ours_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()
        for module in ("megatron.core.optimizer", "deepspeed", "torch.distributed", "megatron_ttt.training"):
            warnings.warn_explicit(f"from {module}", UserWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in caught] == ["from megatron_ttt.training"]
    assert not logging.getLogger("DeepSpeed").filter(logging.makeLogRecord({"levelno": logging.WARNING}))


@pytest.mark.parametrize("rank, every_rank, line", [
    ("0", True, "mttt pretrain: error: bad key\n"),
    ("1", True, ""),  # rank 0 says it for all
    ("1", False, "mttt pretrain: error on rank 1: bad shard\n"),
])
def test_an_error_is_reported_once_per_job(monkeypatch, capsys, rank, every_rank, line):
    monkeypatch.setattr("megatron_ttt.cli.RANK_0_FIRST_S", 0.0)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    exc = UserInputError("bad key" if every_rank else "bad shard")
    exc.every_rank_finds_it = every_rank
    report("mttt pretrain", exc)
    assert capsys.readouterr().err == line


def test_under_mttt_torchrun_an_error_is_one_line_and_status_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "torchrun", "--nproc-per-node", "2", "pretrain",
                          "model.preset=bogus", f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip() == ("mttt pretrain: error: model.preset='bogus' (choose one of tiny, 125m, 350m, 760m, "
                                  "1.3b, 7b, 125m-hybrid, 7b-hybrid, 125m-lact, 760m-lact)")
    assert not (tmp_path / "run").exists()
