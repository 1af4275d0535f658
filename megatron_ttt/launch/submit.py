"""Handing a rendered script to sbatch."""

import shutil
import subprocess
from pathlib import Path

from megatron_ttt.errors import UserInputError


def sbatch(script: Path, options: list[str] = ()) -> str:
    """Submits the script; returns the job id."""
    if shutil.which("sbatch") is None:
        raise UserInputError(f"sbatch is not on PATH: run this on a SLURM login node (the script is written: {script})")
    out = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserInputError(f"sbatch {script} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]
