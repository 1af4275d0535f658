"""Perplexity results as tables (CSV) and the perplexity-by-position plot (PNG)."""

import csv
import io
import math
from pathlib import Path

import numpy as np

from megatron_ttt.atomic import write_atomic, written_atomically
from megatron_ttt.eval.perplexity import ContextResult

SUMMARY_CSV = "perplexity.csv"
BY_POSITION_CSV = "perplexity_by_position.csv"
PLOT_PNG = "perplexity_by_position.png"


def bucket_edges(context: int, kind: str, count: int) -> list[int]:
    """Position bucket boundaries [0, ..., context]: "log" doubles ([0,1), [1,2), [2,4), ...),
    "linear" cuts `count` buckets of equal width (the last may be shorter)."""
    if kind == "log":
        edges = [0] + [2**i for i in range(int(math.log2(context)) + 1) if 2**i < context]
    else:
        width = -(-context // count)
        edges = list(range(0, context, width))
    return edges + [context]


def by_position(result: ContextResult, kind: str, count: int) -> list[dict]:
    edges = bucket_edges(result.context, kind, count)
    rows = []
    for start, end in zip(edges[:-1], edges[1:]):
        tokens = result.windows * (end - start)
        loss = float(result.position_nll[start:end].sum() / tokens)
        rows.append(dict(source=result.source, context=result.context, start=start, end=end, tokens=tokens,
                         nll_sum=float(result.position_nll[start:end].sum()), loss=loss, perplexity=math.exp(loss)))
    return rows


def summary(result: ContextResult) -> dict:
    return dict(source=result.source, context=result.context, windows=result.windows, tokens=result.tokens,
                nll_sum=float(result.position_nll.sum()), loss=result.loss, perplexity=math.exp(result.loss))


def summary_rows(results: list[ContextResult], weights: dict[str, float]) -> list[dict]:
    """A row per source and context; for several sources also a "blend" row per context whose
    loss is the sources' mean by weight (as training's val_loss; it has no nll_sum)."""
    rows = [summary(r) for r in results]
    if len(weights) == 1:
        return rows
    for context in dict.fromkeys(r.context for r in results):
        mine = [r for r in results if r.context == context]
        loss = sum(weights[r.source] * r.loss for r in mine)
        rows.append(dict(source="blend", context=context, windows=sum(r.windows for r in mine),
                         tokens=sum(r.tokens for r in mine), nll_sum="", loss=loss, perplexity=math.exp(loss)))
    return rows


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot(rows: list[dict], path: Path, log_x: bool) -> None:
    """Perplexity vs token position, one line per context length; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    several = len({r["source"] for r in rows}) > 1
    for source, context in sorted({(r["source"], r["context"]) for r in rows}):
        mine = [r for r in rows if (r["source"], r["context"]) == (source, context)]
        middle = np.array([(r["start"] + r["end"]) / 2 for r in mine])
        ax.plot(middle, [r["perplexity"] for r in mine], marker="o", markersize=3,
                label=f"{source}, context {context}" if several else f"context {context}")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity by token position (validation split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(results: list[ContextResult], weights: dict[str, float], out: Path, kind: str,
                 count: int) -> dict[str, Path]:
    """The summary and by-position CSVs and the plot under `out`; returns their paths. `weights`:
    each source's share of the blend (one source: weight 1)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for result in results for row in by_position(result, kind, count)]
    paths = {"summary": out / SUMMARY_CSV, "by_position": out / BY_POSITION_CSV, "plot": out / PLOT_PNG}
    write_atomic(paths["summary"], csv_text(summary_rows(results, weights)))
    write_atomic(paths["by_position"], csv_text(rows))
    plot(rows, paths["plot"], log_x=kind == "log")
    return paths
