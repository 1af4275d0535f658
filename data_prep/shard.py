"""`mttt data shard`: tasks (one per input file) run by worker processes, then the manifest.

Resumption and slicing are the same mechanism: a run does the tasks of its slice that have no
completion marker, then assembles its manifest from the markers. So a killed run re-run with the
same arguments, and N slices joined by `merge-manifests`, both give the manifest an uninterrupted
single run would have written.
"""

import json
import multiprocessing as mp
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from megatron_ttt.data import DataError, Manifest, ShardEntry, Tokenizer
from megatron_ttt.atomic import write_atomic
from megatron_ttt.data.manifest import SPLITS, ShardSettings, TaskEntry
from megatron_ttt.data_prep.task import read_marker, run_task

Result = tuple[TaskEntry, dict[str, list[ShardEntry]]]


@dataclass(frozen=True)
class ShardJob:
    output: Path
    """The dataset directory: shards, task markers, settings and manifests."""
    settings: ShardSettings
    workers: int = 1
    """Worker processes; each loads the tokenizer once and writes its own shards."""
    task_index: int = 0
    num_tasks: int = 1
    """This run does tasks t with t % num_tasks == task_index (a SLURM array slice)."""

    def my_tasks(self) -> list[int]:
        return [t for t in range(len(self.settings.inputs)) if t % self.num_tasks == self.task_index]

    def manifest_path(self) -> Path:
        if self.num_tasks == 1:
            return self.output / "manifest.json"
        return self.output / "manifests" / f"slice-{self.task_index:05d}-of-{self.num_tasks:05d}.json"


def shard_corpus(job: ShardJob, show_progress: bool = True) -> tuple[Manifest, dict]:
    """Run the job's unfinished tasks; write and return its manifest and this run's statistics."""
    _check_job(job)
    job.output.mkdir(parents=True, exist_ok=True)
    _check_settings(job.output, job.settings)
    results = {t: r for t in job.my_tasks() if (r := read_marker(job.output, t)) is not None}
    todo = [t for t in job.my_tasks() if t not in results]
    start = time.perf_counter()
    runner = _run_inline if job.workers == 1 or len(todo) <= 1 else _run_parallel
    results |= runner(job, todo, lambda: tqdm(total=len(todo), unit="task", disable=not show_progress or not todo,
                                              dynamic_ncols=True))
    seconds = time.perf_counter() - start
    tasks = [results[t][0] for t in sorted(results)]
    shards = {s: [e for t in sorted(results) for e in results[t][1][s]] for s in SPLITS}
    manifest = Manifest(job.settings, tasks, shards, slice=(job.task_index, job.num_tasks) if job.num_tasks > 1 else None,
                        directory=job.output)
    path = job.manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.write(path)
    new_tokens = sum(sum(results[t][0].tokens.values()) for t in todo)
    return manifest, {"tasks_run": len(todo), "tasks_reused": len(results) - len(todo), "seconds": seconds,
                      "tokens_per_second": new_tokens / seconds if todo else 0.0, "manifest": str(path)}


def _check_job(job: ShardJob) -> None:
    s, problems = job.settings, []
    if not s.inputs:
        problems.append("no input files")
    if s.seq_len < 1:
        problems.append(f"--seq-len {s.seq_len} must be positive")
    if not 0.0 <= s.val_fraction < 1.0:
        problems.append(f"--val-fraction {s.val_fraction} must be in [0, 1)")
    if s.shard_bytes < 1:
        problems.append(f"--shard-size-mb must be positive (got {s.shard_bytes} bytes)")
    if job.workers < 1:
        problems.append(f"--workers {job.workers} must be at least 1")
    if not 0 <= job.task_index < job.num_tasks:
        problems.append(f"--task-index {job.task_index} is outside 0..{job.num_tasks - 1} (--num-tasks {job.num_tasks})")
    if problems:
        raise DataError("mttt data shard: " + "; ".join(problems))


def _check_settings(directory: Path, settings: ShardSettings) -> None:
    """A folder holding finished tasks of other settings is refused; one whose earlier run
    finished no task (it failed on a wrong column, say) holds nothing to keep and is taken over."""
    path = directory / "settings.json"
    if path.exists():
        old = ShardSettings.from_dict(json.loads(path.read_text())).to_dict()
        new = settings.to_dict()
        changed = [k for k in new if old.get(k) != new[k]]
        if changed and not any((directory / "tasks").glob("t*.json")):
            print(f"note: {directory} was begun with other settings ({', '.join(changed)}) by a run that finished no "
                  "task; starting over with these", file=sys.stderr)
            write_atomic(path, json.dumps(new, indent=1) + "\n")
        elif changed:
            raise DataError(f"{directory} was prepared with other settings ({', '.join(changed)} differ); "
                            "re-run with the same arguments to resume, or use a new --output")
    else:
        write_atomic(path, json.dumps(settings.to_dict(), indent=1) + "\n")


class _Progress:
    """Documents and tokens/s on the bar; called often, redraws at most a few times a second."""

    def __init__(self, bar: tqdm):
        self.bar, self.docs, self.tokens, self.start = bar, 0, 0, time.perf_counter()

    def __call__(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(docs=self.docs, tok_per_s=f"{rate:,.0f}", refresh=False)


def _run_inline(job: ShardJob, todo: list[int], make_bar: Callable[[], tqdm]) -> dict[int, Result]:
    tokenizer, results = Tokenizer(job.settings.tokenizer.path), {}
    with make_bar() as bar:
        progress = _Progress(bar)
        for task in todo:
            results[task] = run_task(job.output, job.settings, task, tokenizer, progress)
            bar.update()
    return results


def _worker(output: Path, settings: ShardSettings, tasks: mp.Queue, events: mp.Queue) -> None:
    tokenizer = Tokenizer(settings.tokenizer.path)
    pending, last = [0, 0], time.perf_counter()

    def progress(docs: int, tokens: int) -> None:
        nonlocal last
        pending[0] += docs
        pending[1] += tokens
        if time.perf_counter() - last > 0.25:
            events.put(("progress", *pending))
            pending[:], last = [0, 0], time.perf_counter()

    while (task := tasks.get()) is not None:
        try:
            result = run_task(output, settings, task, tokenizer, progress)
        except DataError as exc:
            events.put(("error", task, str(exc)))
            return
        events.put(("progress", *pending))
        pending[:] = [0, 0]
        events.put(("done", task, result))


def _run_parallel(job: ShardJob, todo: list[int], make_bar: Callable[[], tqdm]) -> dict[int, Result]:
    # fork: a worker starts at once, without re-importing (webdataset imports torch, ~1 s). The
    # workers are forked before the parent starts any thread (queue feeders, the bar's monitor).
    ctx = mp.get_context("fork")
    tasks, events = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(job.output, job.settings, tasks, events), daemon=True)
               for _ in range(min(job.workers, len(todo)))]
    for w in workers:
        w.start()
    for task in todo + [None] * len(workers):
        tasks.put(task)
    try:
        with make_bar() as bar:
            return _collect(job, todo, workers, events, bar)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()


def _collect(job: ShardJob, todo: list[int], workers: list, events: mp.Queue, bar: tqdm) -> dict[int, Result]:
    progress, results = _Progress(bar), {}
    while len(results) < len(todo):
        try:
            kind, *payload = events.get(timeout=1.0)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise DataError(f"a shard worker died (exit code {dead[0].exitcode}); "
                                "finished tasks are kept, re-run the same command to resume") from None
            continue
        if kind == "progress":
            progress(*payload)
        elif kind == "done":
            results[payload[0]] = payload[1]
            bar.update()
        else:
            raise DataError(f"task {payload[0]} ({job.settings.inputs[payload[0]]}): {payload[1]}")
    return results
