"""Writing a file or directory under a temporary name and renaming it when complete, so a crash
leaves the old version (or nothing), never a half-written one under the final name."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path, shared: bool = False) -> Path:
    """The temporary sibling `path` is written under. Private to this process unless `shared`:
    the ranks of a collective write must agree on its name."""
    return path.with_name(f".{path.name}.partial" + ("" if shared else str(os.getpid())))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def written_atomically(path: Path, renames: bool = True, shared: bool = False) -> Iterator[Path]:
    """The temporary path to write `path`'s content to (a file, or a directory the body creates);
    renamed to `path` (replacing what was there) when the body finishes, removed if it fails.
    renames: whether this process cleans up and renames (the writer, or rank 0 of a collective
    write whose other ranks write into the same `shared` temporary)."""
    tmp = partial_path(Path(path), shared)
    if renames:
        _remove(tmp)
    try:
        yield tmp
    except BaseException:
        if renames:
            _remove(tmp)
        raise
    if renames:
        if tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    with written_atomically(path) as tmp:
        tmp.write_text(text)
