"""Checksums over a checkpoint written or read by many ranks at once: each rank reads a share of
the files (as rank 0 lists them, so the shares agree), and rank 0 records or reports for all.
Collective over the default process group; checksums.py is the format."""

from pathlib import Path

import torch.distributed as dist

from megatron_ttt.checkpoint.checksums import checkpoint_files, file_sum, problems, recorded, selected, write_checksums
from megatron_ttt.checkpoint.run_dir import CheckpointError


def _from_rank0(value):
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _share(names: list[str]) -> list[str]:
    return names[dist.get_rank()::dist.get_world_size()]


def _all_of(part):
    """Every rank's `part` (a dict or list), joined in rank order, on every rank."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def seal(directory: Path) -> None:
    """Record the checksum of every file in `directory` (complete, not yet published)."""
    names = _from_rank0(checkpoint_files(directory) if dist.get_rank() == 0 else None)
    sums = {name: file_sum(directory / name) for name in _share(names)}
    everyone = _all_of(sums)
    if dist.get_rank() == 0:
        write_checksums(directory, {k: v for part in everyone for k, v in part.items()})
    dist.barrier()


def damage(directory: Path) -> list[str] | None:
    """What is wrong with the checkpoint's files (every rank gets the same list, empty when it is
    intact); None when it records no checksums (written before they existed)."""
    sums = _from_rank0(_recorded_or_why(directory) if dist.get_rank() == 0 else None)
    if sums is None or isinstance(sums, str):
        return sums and [sums]
    found = problems(directory, _share(selected(sums, None)), sums)
    return [p for part in _all_of(found) for p in part]


def _recorded_or_why(directory: Path) -> dict | str | None:
    try:
        return recorded(directory)
    except CheckpointError as exc:
        return str(exc)
