"""Launching short pretraining runs as real processes (one forked from the test server, or torchrun) for the tests."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from megatron_ttt.checkpoint.checksums import checkpoint_files, file_sum, write_checksums
from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.distributed import run_command, run_distributed

FAST = ["train.steps=6", "data.seq_len=64", "data.micro_batch_size=4", "data.global_batch_tokens=512",
        "data.num_workers=0", "data.bundled_vocab_size=512", "logging.eval_interval=3", "logging.interval=1",
        "logging.tensorboard=false", "checkpoint.interval=3", "checkpoint.keep=2"]


EVERY_STEP = ["checkpoint.interval=1", "checkpoint.keep=6"]
"""With FAST: a checkpoint after each of the 6 steps, all kept."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_args(run_dir: Path, overrides: list[str]) -> list[str]:
    """`mttt pretrain`'s arguments for the FAST run and `overrides`."""
    return ["pretrain", f"run_dir={run_dir}", *FAST, *overrides]


def command(run_dir: Path, overrides: list[str], nproc: int = 1) -> list[str]:
    args = ["-m", "megatron_ttt.cli", *pretrain_args(run_dir, overrides)]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}", *args]


def environment(cache: Path) -> dict:
    return os.environ | {"MTTT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


RUN_TIMEOUT = 600
"""Seconds a test run may take (the longest take about a minute): a hung collective fails the
test here instead of waiting out gloo's 30-minute timeout."""


def pretrain(run_dir: Path, cache: Path, overrides: list[str] = (), nproc: int = 1, check: bool = True):
    """`mttt pretrain` of the FAST run and `overrides`: one process forked from the test server
    (tests/distributed.py), several under torchrun."""
    if nproc == 1:
        out = run_command(pretrain_args(run_dir, list(overrides)), environment(cache), RUN_TIMEOUT)
    else:
        out = _run(command(run_dir, list(overrides), nproc), cache)
    if check and out.returncode != 0:
        raise AssertionError(f"pretrain exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, env=environment(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every rank
        stdout, stderr = proc.communicate()
        raise AssertionError(f"pretrain did not finish in {RUN_TIMEOUT} s and was killed:\n{stdout[-3000:]}\n"
                             f"{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def metrics(run_dir: Path) -> dict[int, dict]:
    """Each step's line of metrics.jsonl."""
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def losses(run_dir: Path) -> dict[int, float]:
    return {step: row["train_loss"] for step, row in metrics(run_dir).items()}


def final_weights(run_dir: Path, tag: str | None = None, tp_rank: int = 0) -> dict[str, torch.Tensor]:
    root = run_dir / "checkpoints"
    tag = tag or (root / "latest").read_text().strip()
    path = root / tag / f"mp_rank_{tp_rank:02d}_model_states.pt"
    if not path.exists():  # ZeRO-3: the weights live partitioned in the optimizer states
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(root), tag)
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def cut_at(src: Path, dst: Path, step: int) -> Path:
    """A copy of a run directory whose latest checkpoint is `step` (the newer ones removed)."""
    shutil.copytree(src, dst)
    root = dst / "checkpoints"
    for path in root.glob("step-*"):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    (root / "latest").write_text(f"step-{step:08d}")
    return dst


def reseal(checkpoint: Path) -> None:
    """Record the checksums of a checkpoint a test edited on purpose, as if it had been written so."""
    write_checksums(checkpoint, {name: file_sum(checkpoint / name) for name in checkpoint_files(checkpoint)})


def flip_bytes(path: Path, *offsets: int) -> None:
    """Damage a file in place without changing its size."""
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def layout_free_weights(rank, world, store, directory):
    groups = init_parallel(ParallelLayout(world), store=store)
    weights = {n: p.detach().clone() for n, p in load_model(directory, groups).named_parameters()}
    destroy_parallel()
    return weights


def max_weight_difference(a: Path, b: Path, step: int = 6) -> float:
    """The largest difference between two runs' layout-free weights at `step`."""
    wa, wb = (run_distributed(1, layout_free_weights, d / "checkpoints" / f"step-{step:08d}")[0] for d in (a, b))
    assert wa.keys() == wb.keys()
    return max((wa[n] - wb[n]).abs().max().item() for n in wa)
