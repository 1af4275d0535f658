import subprocess
import sys

from megatron_ttt import __version__
from megatron_ttt.cli import main


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"megatron-ttt {__version__} (torch ")


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "version" in capsys.readouterr().out


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
