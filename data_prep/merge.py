"""`mttt data merge-manifests`: join the manifests of task slices into the dataset's manifest."""

from pathlib import Path

from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.manifest import SPLITS


def slice_manifests(directory: Path) -> list[Path]:
    paths = sorted((directory / "manifests").glob("slice-*-of-*.json"))
    if not paths:
        raise DataError(f"no slice manifests under {directory / 'manifests'}; run `mttt data shard --num-tasks N` first")
    return paths


def merge_manifests(paths: list[Path], output: Path) -> Manifest:
    """Check that the slices come from one job and cover every task once; write `output`."""
    slices = [Manifest.load(p) for p in paths]
    first = slices[0]
    for path, m in zip(paths, slices):
        if m.slice is None:
            raise DataError(f"{path} is a complete manifest, not a slice")
        if m.settings != first.settings:
            raise DataError(f"{path} was written with other settings than {paths[0]}; slices of one dataset must "
                            "share inputs, tokenizer and options")
    count = first.slice[1]
    seen = {m.slice[0]: p for p, m in zip(paths, slices)}
    if len(seen) != len(slices) or any(m.slice[1] != count for m in slices):
        raise DataError(f"slices repeat an index or disagree on --num-tasks: {[str(p) for p in paths]}")
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise DataError(f"slices {missing} of {count} are missing; run them (mttt data shard --task-index I "
                        f"--num-tasks {count}) before merging")
    tasks = sorted((t for m in slices for t in m.tasks), key=lambda t: t.index)
    if [t.index for t in tasks] != list(range(len(first.settings.inputs))):
        raise DataError("the slices do not cover every input task exactly once")
    order = {t.index: i for i, t in enumerate(tasks)}
    shards = {s: sorted((e for m in slices for e in m.shards[s]), key=lambda e: (order[e.task], e.path)) for s in SPLITS}
    merged = Manifest(first.settings, tasks, shards, slice=None, directory=output.parent)
    merged.write(output)
    return merged
