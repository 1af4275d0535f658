"""Loading and saving checkpoints leaves gloo's worker threads without OpenMP teams of their own
(a second team slows every later parallel op of the process; see gloo_threads.py)."""

import os
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from megatron_ttt.checkpoint.model_dir import WEIGHTS_DIR, load_model, save_model
from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from tests.distributed import run_distributed


def _gloo_threads() -> int:
    """OS threads named after gloo's run loop: its workers and any OpenMP team one started."""
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sum(name == "pt_gloo_runloop" for name in names)


def _threads_around(rank, world, store, directory, guarded):
    """gloo threads before and after saving then loading a model (guarded: as model_dir does it;
    not: dist_checkpointing's own load, as before), and the intra-op threads after."""
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import parallel_groups

    with parallel_groups(ParallelLayout(), store=store) as groups:
        torch.set_num_threads(2)
        torch.nn.functional.gelu(torch.randn(1024, 1024))  # the main thread's own team, as in any run
        before = _gloo_threads()
        if guarded:
            save_model(build_model(preset("tiny", num_layers=12), groups, init_seed=0), directory)
            load_model(directory, groups)
        else:
            model = build_model(preset("tiny", num_layers=12), groups)
            dist_checkpointing.load(model.sharded_state_dict(), str(directory / WEIGHTS_DIR))
        return before, _gloo_threads(), torch.get_num_threads()


def test_checkpoint_io_starts_no_openmp_team_on_gloo_workers(tmp_path):
    (before, after, threads), = run_distributed(1, _threads_around, tmp_path / "model", True)
    assert after == before, f"gloo threads {before} -> {after}: a worker started an OpenMP team"
    assert threads == 2, "the intra-op thread count was not restored"
    (before, after, _), = run_distributed(1, _threads_around, tmp_path / "model", False)
    assert after > before, "an unguarded load started no team either: this check cannot see one"
