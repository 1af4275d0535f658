"""Shards checked against their manifest: `mttt data verify`, and training at its start
(data.verify). A stat per shard finds missing and truncated shards; only hashing every byte
finds a shard damaged in place."""

from collections.abc import Container

from tqdm import tqdm

from megatron_ttt.data import DataError, Manifest, ShardEntry
from megatron_ttt.data.shard_reader import member_stride
from megatron_ttt.data.tokenizer import file_sha256

Shard = tuple[Manifest, ShardEntry]


def least_size(manifest: Manifest, entry: ShardEntry) -> int:
    """The bytes a shard's samples occupy: all that a manifest written before shard sizes were
    recorded can tell about the file's length (the tar's end blocks come on top)."""
    return entry.samples * member_stride(manifest.settings.sample_tokens * manifest.dtype.itemsize)


def size_problem(manifest: Manifest, entry: ShardEntry) -> str | None:
    """What a stat shows to be wrong with a shard, or None."""
    path = manifest.directory / entry.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"shard {path} is missing"
    except OSError as exc:
        return f"shard {path} cannot be read: {exc.strerror or exc}"
    if entry.size_bytes is None:
        if size < (least := least_size(manifest, entry)):
            return f"shard {path} is truncated: {size:,} bytes, its {entry.samples} samples need {least:,}"
    elif size < entry.size_bytes:
        return f"shard {path} is truncated: {size:,} bytes, the manifest says {entry.size_bytes:,}"
    elif size > entry.size_bytes:
        return f"shard {path} is not the file that was written: {size:,} bytes, the manifest says {entry.size_bytes:,}"
    return None


def hash_problem(manifest: Manifest, entry: ShardEntry) -> str | None:
    """A shard whose bytes differ from those the manifest recorded, or None (reads the whole file)."""
    path = manifest.directory / entry.path
    if (digest := file_sha256(path)) != entry.sha256:
        return f"shard {path} is damaged: sha256 {digest[:12]}..., the manifest says {entry.sha256[:12]}..."
    return None


def shard_problems(shards: list[Shard], hashed: Container[int] = (),
                   show_progress: bool = False) -> list[tuple[int, str]]:
    """(position in `shards`, what is wrong) for each shard that is missing or of the wrong size
    and, among the positions in `hashed`, each whose sha256 differs. The stats come first: they
    are quick, and a shard of the wrong size is not worth hashing."""
    problems = [(i, p) for i, (m, e) in enumerate(shards) if (p := size_problem(m, e))]
    bad = {i for i, _ in problems}
    todo = [i for i in range(len(shards)) if i in hashed and i not in bad]
    for i in tqdm(todo, unit="shard", desc="sha256", disable=not show_progress or not todo, dynamic_ncols=True):
        if problem := hash_problem(*shards[i]):
            problems.append((i, problem))
    return sorted(problems)


def verify_shards(manifest: Manifest, show_progress: bool = False) -> None:
    """Every shard of the manifest stat'ed and hashed; one DataError listing each bad shard."""
    shards = [(manifest, e) for e in manifest.entries()]
    problems = shard_problems(shards, range(len(shards)), show_progress)
    if problems:
        lines = "\n  ".join(p for _, p in problems)
        raise DataError(f"{len(problems)} of {len(shards)} shards do not match the manifest:\n  {lines}\n"
                        f"{manifest.repair_hint([shards[i][1] for i, _ in problems])}")
