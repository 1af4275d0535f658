"""Checksums over a checkpoint written or read by many ranks at once: each rank reads a share of
the files (as rank 0 lists them, so the shares agree), and rank 0 records or reports for all.
Collective over the default process group; checksums.py is the format."""

from pathlib import Path

import torch.distributed as dist

from megatron_ttt.checkpoint.checksums import (
    checkpoint_files,
    file_sum,
    problems,
    recorded_or_why,
    selected,
    write_checksums,
)
from megatron_ttt.parallel.objects import every_rank, from_rank0, is_rank0, my_share


def seal(directory: Path) -> None:
    """Record the checksum of every file in `directory` (complete, not yet published)."""
    names = from_rank0(checkpoint_files(directory) if is_rank0() else None)
    everyone = every_rank({name: file_sum(directory / name) for name in my_share(names)})
    if is_rank0():
        write_checksums(directory, {k: v for part in everyone for k, v in part.items()})
    dist.barrier()


def damage(directory: Path) -> list[str] | None:
    """What is wrong with the checkpoint's files (every rank gets the same list, empty when it is
    intact); None when it records no checksums (written before they existed)."""
    sums, why = from_rank0(recorded_or_why(directory) if is_rank0() else None)
    if why is not None:
        return [why]
    if sums is None:
        return None
    found = problems(directory, my_share(selected(sums, None)), sums)
    return [p for part in every_rank(found) for p in part]
