"""What a run shows: a console line per logged step (with the time so far and the time left),
metrics.jsonl, tensorboard, loss.png."""

import json
import time
from pathlib import Path


class Reporter:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        """start_step: the step the run resumed from (0: a fresh start). metrics.jsonl already
        holds no later step (the trainer drops those lines); tensorboard's are purged as it reads
        them, superseded by the steps trained again."""
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics = run_dir / "metrics.jsonl"
        self.start_step, self.started = start_step, time.perf_counter()
        self.elapsed_before = previous_elapsed(self.metrics) if enabled else 0.0
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
    def step(self, step: int, total: int, values: dict, print_line: bool, details: dict | None = None) -> None:
        """`values` go to every output; `details` (per-source counts) to metrics.jsonl and
        tensorboard only, not the console line."""
        if not self.enabled:
            return
        since_start = time.perf_counter() - self.started
        elapsed = self.elapsed_before + since_start
        with open(self.metrics, "a") as f:
            f.write(json.dumps({"step": step} | values | {"elapsed_s": round(elapsed, 3)} | (details or {})) + "\n")
        if self.writer is not None:
            for key, value in (values | (details or {})).items():
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)
        if print_line:
            left = since_start / (step - self.start_step) * (total - step)
            parts = [f"step {step}/{total}"] + [
                f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
            parts += [f"elapsed {duration(elapsed)}", f"eta {duration(left)}"]
            print(" | ".join(parts), flush=True)

    def finish(self) -> Path | None:
        if not self.enabled:
            return None
        if self.writer is not None:
            self.writer.close()
        return plot_losses(self.metrics, self.run_dir / "loss.png")


def previous_elapsed(metrics: Path) -> float:
    """The wall time the run had taken by its last logged step (0 for a fresh run), so a resumed
    run's elapsed time goes on from there."""
    if not metrics.exists():
        return 0.0
    lines = metrics.read_text().splitlines()
    return json.loads(lines[-1]).get("elapsed_s", 0.0) if lines else 0.0


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m, 3d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def plot_losses(metrics: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    for source in sorted({k for r in rows for k in r if k.startswith("val_loss_")}):
        points = [(r["step"], r[source]) for r in rows if source in r]
        ax.plot(*zip(*points), ".--", linewidth=1, label=f"validation: {source.removeprefix('val_loss_')}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
