"""One task: one input file tokenized, split into train/val, packed and written as shards.

A task is the unit of parallelism and of resumption: a worker process runs whole tasks, each
writes only its own shards, and a completion marker (`DIR/tasks/tTTTTT.json`, written last and
atomically) is the single proof that a task is done.
"""

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from megatron_ttt.data import DataError, ShardEntry, Tokenizer
from megatron_ttt.atomic import write_atomic
from megatron_ttt.data.manifest import SPLITS, ShardSettings, TaskEntry, task_marker
from megatron_ttt.data_prep.pack import ProgressFn, ShardSink, remove_task_shards
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents

ENCODE_BATCH_DOCS = 256
"""Documents per sentencepiece call: enough to amortize the call, small enough for memory."""


def source_options(settings: ShardSettings, task: int) -> SourceOptions:
    return SourceOptions(settings.input_format, settings.text_docs, settings.text_fields[task],
                         settings.bad_utf8, settings.skip_bad)


def read_marker(directory: Path, task: int) -> tuple[TaskEntry, dict[str, list[ShardEntry]]] | None:
    path = task_marker(directory, task)
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text())
        return TaskEntry(**body["task"]), {s: [ShardEntry(**e) for e in body["shards"][s]] for s in SPLITS}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"task marker {path} is damaged ({exc}); delete it and run again to redo task {task}") from None


def run_task(directory: Path, settings: ShardSettings, task: int, tokenizer: Tokenizer,
             progress: ProgressFn) -> tuple[TaskEntry, dict[str, list[ShardEntry]]]:
    """Run one task from scratch (removing any partial output of an earlier attempt)."""
    remove_task_shards(directory, task, SPLITS)
    path = Path(settings.inputs[task])
    sinks = {split: ShardSink(directory, split, task, settings.sample_tokens, np.dtype(settings.dtype),
                              tokenizer.vocab_size, tokenizer.eos_id, settings.shard_bytes) for split in SPLITS}
    stats, documents = SourceStats(), 0
    rng = np.random.default_rng([settings.seed, task])
    docs = iter_documents(path, source_options(settings, task), stats)
    while batch := list(itertools.islice(docs, ENCODE_BATCH_DOCS)):
        token_lists = tokenizer.encode(batch)
        is_val = rng.random(len(batch)) < settings.val_fraction
        for split, want in (("train", False), ("val", True)):
            chosen = [ids for ids, v in zip(token_lists, is_val) if v == want]
            if chosen:
                sinks[split].add(chosen)
        documents += len(batch)
        progress(len(batch), sum(map(len, token_lists)) + len(batch))
    for sink in sinks.values():
        sink.close()
    entry = TaskEntry(index=task, input=str(path), documents=documents, empty=stats.empty,
                      bad_utf8=stats.bad_utf8, skipped=stats.skipped, truncated=stats.truncated,
                      tokens={s: sinks[s].tokens for s in SPLITS},
                      dropped_tokens={s: sinks[s].dropped_tokens for s in SPLITS})
    shards = {s: sinks[s].shards for s in SPLITS}
    body = {"task": asdict(entry), "shards": {s: [asdict(e) for e in shards[s]] for s in SPLITS}}
    marker = task_marker(directory, task)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(body, indent=1) + "\n")
    return entry, shards
