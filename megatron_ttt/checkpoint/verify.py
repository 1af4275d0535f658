"""`mttt checkpoint verify RUN|CKPT`: every file of one checkpoint, or of each checkpoint of a
run, checked against the checksums written with it. Plain Python (no torch): it runs anywhere
the files can be read."""

import sys
from pathlib import Path

from tqdm import tqdm

from megatron_ttt.checkpoint.checksums import check, recorded_or_why, summary
from megatron_ttt.checkpoint.run_dir import CHECKPOINTS, MODEL_CONFIG, RUN_CONFIG, CheckpointError, saved_steps


def checkpoints_named(path: Path) -> list[Path]:
    """The checkpoints `path` names: a run directory (or its checkpoints/ folder) all of its own,
    a training checkpoint or a model directory itself."""
    path = Path(path)
    run_dir = path.parent if path.name == CHECKPOINTS else path
    if (run_dir / CHECKPOINTS).is_dir():
        found = [p for _, p in saved_steps(run_dir)]
        if not found:
            raise CheckpointError(f"{run_dir} has no checkpoints yet")
        return found
    if (path / MODEL_CONFIG).exists() or (path / RUN_CONFIG).exists():
        return [path]
    raise CheckpointError(f"{path} is not a run directory, a training checkpoint or a model directory")


def verify(path: Path, show_progress: bool = True) -> int:
    """Prints one line per checkpoint (ok, damaged with each problem, or without checksums); the
    exit status: 0 when none is damaged, 2 otherwise."""
    checkpoints = checkpoints_named(path)
    sums = {c: recorded_or_why(c)[0] or {} for c in checkpoints}
    total = sum(s.bytes for c in checkpoints for s in sums[c].values())
    damaged = 0
    with tqdm(total=total, unit="B", unit_scale=True, disable=not show_progress, file=sys.stderr) as bar:
        for checkpoint in checkpoints:
            found = check(checkpoint, progress=bar.update)
            if found is None:
                tqdm.write(f"{checkpoint}: no checksums (written before they existed); cannot be verified")
            elif found:
                damaged += 1
                tqdm.write(f"{checkpoint}: DAMAGED: {summary(found)}")
                for problem in found[1:]:
                    tqdm.write(f"    {problem}")
            else:
                files = sums[checkpoint]
                size = sum(s.bytes for s in files.values()) / 1e6
                tqdm.write(f"{checkpoint}: ok ({len(files)} files, {size:,.1f} MB)")
    if damaged:
        print(f"{damaged} of {len(checkpoints)} checkpoints are damaged: resume passes over them to the newest intact "
              "one; eval and convert need an intact one", file=sys.stderr)
    return 2 if damaged else 0
