"""Checkpoints prove themselves: every file's size and CRC-32 are recorded at save, and a
truncated, bit-flipped or missing file stops eval, generate and convert with exit 2 naming the
file and the previous checkpoint that verifies; `mttt checkpoint verify` lists them; checkpoints
written before checksums load with a note. (Resuming past a damaged checkpoint:
tests/training/test_pretrain.py.)"""

import json
import shutil

import numpy as np
import pytest

from megatron_ttt.checkpoint.checksums import CHECKSUMS, check, checkpoint_files, file_sum, write_checksums
from megatron_ttt.cli import main
from tests.training.runs import flip_bytes


@pytest.fixture
def run(tmp_path, uninterrupted):
    """A copy of a run with a checkpoint after each of its 6 steps."""
    return shutil.copytree(uninterrupted, tmp_path / "run")


def step(run, n: int):
    return run / "checkpoints" / f"step-{n:08d}"


def weights_file(checkpoint):
    return next((checkpoint / "model").glob("*.distcp"))


def test_each_kind_of_damage_is_named(tmp_path):
    for name, size in (("a.bin", 1000), ("sub/b.bin", 3000), ("c.json", 10)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    write_checksums(tmp_path, {n: file_sum(tmp_path / n) for n in checkpoint_files(tmp_path)})
    assert check(tmp_path) == [] and checkpoint_files(tmp_path) == ["a.bin", "c.json", "sub/b.bin"]
    flip_bytes(tmp_path / "a.bin", 7)
    (tmp_path / "sub" / "b.bin").write_bytes((tmp_path / "sub" / "b.bin").read_bytes()[:2048])
    (tmp_path / "c.json").unlink()
    assert check(tmp_path) == [
        f"{tmp_path / 'a.bin'} has CRC-32 {file_sum(tmp_path / 'a.bin').crc32}, "
        f"{json.loads((tmp_path / CHECKSUMS).read_text())['files']['a.bin']['crc32']} was written (its bytes changed)",
        f"{tmp_path / 'c.json'} is missing",
        f"{tmp_path / 'sub' / 'b.bin'} has 2,048 bytes, 3,000 were written (a partial copy?)"]
    assert check(tmp_path, ["sub"]) == check(tmp_path)[2:]
    (tmp_path / CHECKSUMS).write_text('{"files": ')
    assert check(tmp_path)[0].startswith(f"{tmp_path / CHECKSUMS} is damaged (JSONDecodeError")


def flipped(checkpoint):
    flip_bytes(weights_file(checkpoint), 100, 200)
    return f"{weights_file(checkpoint)} has CRC-32 "


def truncated(checkpoint):
    weights_file(checkpoint).write_bytes(weights_file(checkpoint).read_bytes()[:-1])
    return f"{weights_file(checkpoint)} has "


def missing(checkpoint):
    (checkpoint / "model_config.json").unlink()
    return f"{checkpoint / 'model_config.json'} is missing"


@pytest.mark.parametrize("command, damage", [
    (["eval", "logprobs", "--input", "{tmp}/ids.npy", "--output", "{tmp}/out"], flipped),
    (["generate", "--prompt", "a", "--max-new-tokens", "1"], truncated),
    (["convert", "mttt-to-hf", "{run}", "{tmp}/out"], missing),
])
def test_a_damaged_checkpoint_stops_eval_generate_and_convert(tmp_path, run, capsys, command, damage):
    problem = damage(step(run, 6))  # the latest
    np.save(tmp_path / "ids.npy", np.zeros((1, 8), dtype=np.int64))
    if "{run}" not in command:
        command = command + ["--checkpoint", "{run}"]
    assert main([word.format(tmp=tmp_path, run=run) for word in command]) == 2
    err = capsys.readouterr().err
    assert f"{step(run, 6)} is damaged: {problem}" in err, err
    assert f"The previous complete checkpoint is {step(run, 5)}" in err, err
    assert not (tmp_path / "out").exists()


def test_verify_lists_every_checkpoint_of_a_run(run, capsys):
    flipped(step(run, 6))
    truncated(step(run, 4))
    assert main(["checkpoint", "verify", str(run), "--quiet"]) == 2
    lines = capsys.readouterr().out.splitlines()
    ok = "ok (20 files, 3.8 MB)"
    assert [line.split(": ")[1] for line in lines] == [ok, ok, ok, "DAMAGED", ok, "DAMAGED"], lines
    assert f"{weights_file(step(run, 4))} has" in lines[3] and "(a partial copy?)" in lines[3]
    assert main(["checkpoint", "verify", str(step(run, 5)), "--quiet"]) == 0


def test_a_checkpoint_written_before_checksums_loads_with_a_note_and_its_copy_is_sealed(tmp_path, run, capsys):
    (step(run, 6) / CHECKSUMS).unlink()
    assert main(["convert", "mttt-to-mttt", str(run), str(tmp_path / "copy")]) == 0
    assert f"note: {step(run, 6)} carries no checksums (written before they existed)" in capsys.readouterr().err
    assert check(tmp_path / "copy") == [] and (tmp_path / "copy" / CHECKSUMS).exists()
    assert main(["checkpoint", "verify", str(run), "--quiet"]) == 0
    assert f"{step(run, 6)}: no checksums (written before they existed)" in capsys.readouterr().out
