"""dist_checkpointing's torch_dist format, with each rank writing its own files in its own process.

megatron-core 0.16.1 writes a rank's files from child processes it forks at every save, and
collects their results through a queue served by a process it spawns at the first save. Both
are hazards for a training rank: a child forked from a process that runs gloo's threads may
inherit a lock one of those threads held and wait on it forever (its rank then waits for the
child, every other rank in the barrier after the write, until the collective times out), and a
signal to the whole job (scancel, preemption) kills the spawned process, which fails the very
checkpoint the signal asks for. A rank's files are few and written once per checkpoint, so
writing them in the rank's own process costs little and removes both. (Later megatron-core
releases write from threads for the same reason.)
"""

import queue
from pathlib import Path

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy


class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
    """The torch_dist save strategy (same files, same metadata), minus the forked writers."""

    def __init__(self):
        super().__init__("torch_dist", 1)
        if filesystem_async._results_queue is None:
            # The writer reads its results from this module-level queue; an in-process one
            # means no helper process is ever spawned.
            filesystem_async._results_queue = queue.Queue()

    def _get_save_and_finalize_callbacks(self, writer, save_state_dict_ret) -> AsyncRequest:
        request = super()._get_save_and_finalize_callbacks(writer, save_state_dict_ret)
        if request.async_fn is None:  # nothing to write on this rank
            return request
        transforms = [writer.transforms] if hasattr(writer, "transforms") else []
        return request._replace(async_fn=lambda rank, buckets, results: _write(transforms, buckets, results))


def _write(transforms: list, buckets: list, results: queue.Queue) -> None:
    """Write each bucket (one file) in turn; report all their write results, or the first error,
    through `results` as the forked writers would."""
    written = {}
    for index, bucket in enumerate(buckets):
        done, count = queue.Queue(), queue.Queue()
        count.put(index)
        FileSystemWriterAsync.write_preloaded_data(transforms, index, bucket, done, count, use_fsync=True)
        _, outcome = done.get_nowait()
        if isinstance(outcome, Exception):
            results.put(outcome)
            return
        written[index] = outcome
    results.put(written)


def save(sharded_state_dict: dict, directory: Path) -> None:
    """dist_checkpointing.save into an existing, empty directory (collective)."""
    dist_checkpointing.save(sharded_state_dict, str(directory), sharded_strategy=InProcessTorchDistSave())
