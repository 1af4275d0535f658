"""Long-context retrieval results: per-cell CSV, a length x depth heatmap per task, and the
settings that reproduce them."""

import json
import math
from pathlib import Path

import numpy as np

from megatron_ttt.atomic import write_atomic, written_atomically
from megatron_ttt.eval.long_context import Outcome, Trial
from megatron_ttt.eval.perplexity_report import csv_text

CELLS_CSV = "long_context.csv"
SETTINGS_JSON = "long_context.json"


def cells(trials: list[Trial], outcomes: list[Outcome]) -> list[dict]:
    """One row per (task, length, depth): accuracy and the answer's mean log-probability."""
    groups: dict[tuple, list[tuple[Trial, Outcome]]] = {}
    for trial, outcome in zip(trials, outcomes):
        groups.setdefault((trial.task, trial.length, trial.depth), []).append((trial, outcome))
    rows = []
    for (task, length, depth), members in groups.items():
        logprobs = [o.logprob for _, o in members]
        answer_tokens = np.mean([len(t.answer) for t, _ in members])
        rows.append(dict(task=task, length=length, depth=depth, trials=len(members),
                         accuracy=float(np.mean([o.exact for _, o in members])),
                         answer_logprob=float(np.mean(logprobs)),
                         answer_logprob_per_token=float(np.mean(logprobs) / answer_tokens)))
    return rows


def heatmap(rows: list[dict], task: str, path: Path) -> None:
    """Accuracy by context length (x) and needle depth (y), each cell annotated; atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["task"] == task]
    lengths, depths = sorted({r["length"] for r in mine}), sorted({r["depth"] for r in mine})
    grid = np.full((len(depths), len(lengths)), math.nan)
    for r in mine:
        grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 2))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for (y, x), value in np.ndenumerate(grid):
        ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (0: start, 1: end)")
    ax.set_title(f"{task}: exact-match accuracy")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(trials: list[Trial], outcomes: list[Outcome], out: Path, settings: dict) -> dict[str, Path]:
    """The cells' CSV, one heatmap per task and the settings JSON under `out`; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = cells(trials, outcomes)
    paths = {"cells": out / CELLS_CSV, "settings": out / SETTINGS_JSON}
    write_atomic(paths["cells"], csv_text(rows))
    write_atomic(paths["settings"], json.dumps(settings, indent=1) + "\n")
    for task in sorted({r["task"] for r in rows}):
        paths[task] = out / f"long_context_{task}.png"
        heatmap(rows, task, paths[task])
    return paths
