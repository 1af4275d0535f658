"""Real `mttt pretrain` runs (one process, ZeRO 0) on the bundled corpus, for the benchmarks that
compare configurations at equal steps on the same data (optimizers.py, layer_kinds.py)."""

import json
import statistics
import subprocess
import sys
from pathlib import Path


def pretrain(run_dir: Path, preset: str, steps: int, global_batch_tokens: int, seed: int, overrides: list[str]) -> None:
    """One run of `steps` optimizer steps, validated and checkpointed once, at the end."""
    subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "pretrain", f"run_dir={run_dir}", f"model.preset={preset}",
                    f"train.steps={steps}", f"train.seed={seed}", f"data.global_batch_tokens={global_batch_tokens}",
                    "logging.tensorboard=false", f"logging.eval_interval={steps}", f"checkpoint.interval={steps}",
                    *overrides], check=True, capture_output=True)


def metrics(run_dir: Path) -> list[dict]:
    """The run's logged rows, one per step."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_losses(run_dir: Path) -> dict:
    rows = metrics(run_dir)
    return {"train_loss": rows[-1]["train_loss"], "val_loss": rows[-1]["val_loss"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:])}
