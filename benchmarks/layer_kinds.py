"""Training loss per step of each layer kind at equal steps on the same data: TTT-Linear (the
baseline), TTT-MLP and LaCT, each a real `mttt pretrain` run (one process, ZeRO 0) of --preset
on the bundled corpus with the same seed, batch and optimizer. The table gives the mean training
loss over each quarter of the steps, the final validation loss and throughput; the plot
(--plot) draws every kind's loss curve.

    python benchmarks/layer_kinds.py
    python benchmarks/layer_kinds.py --steps 200 --json rows.json --plot curves.png
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from pretrain_runs import final_losses, metrics, pretrain

KINDS = {"TTT-Linear": "linear", "TTT-MLP": "mlp", "LaCT": "lact"}


def quarters(losses: list[float]) -> list[float]:
    """The mean of each quarter of the steps' losses."""
    n = len(losses)
    return [statistics.fmean(losses[i * n // 4:(i + 1) * n // 4]) for i in range(4)]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for r in rows:
        axes.plot(range(1, len(r["curve"]) + 1), r["curve"], label=r["kind"], linewidth=1)
    axes.set(xlabel="step", ylabel="training loss", title="Layer kinds at equal steps")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"among {', '.join(KINDS)}")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--global-batch-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="also draw the loss curves into this PNG")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            run_dir = Path(tmp) / KINDS[kind]
            pretrain(run_dir, args.preset, args.steps, args.global_batch_tokens, args.seed,
                     [f"model.layer_type={KINDS[kind]}"])
            curve = [r["train_loss"] for r in metrics(run_dir)]
            rows.append({"kind": kind, "curve": curve, "quarters": quarters(curve), **final_losses(run_dir)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), file=sys.stderr, flush=True)
    base = rows[0]
    print(f"preset {args.preset}, bundled corpus, {args.steps} steps of {args.global_batch_tokens} tokens, AdamW + "
          "cosine at the default lr; training loss: the mean over each quarter of the steps")
    print(f"{'kind':<10} {'q1':>7} {'q2':>7} {'q3':>7} {'q4':>7} {'final val':>9} {'val - base':>10} {'tokens/s':>9}")
    for r in rows:
        q = " ".join(f"{x:>7.3f}" for x in r["quarters"])
        print(f"{r['kind']:<10} {q} {r['val_loss']:>9.4f} {r['val_loss'] - base['val_loss']:>+10.4f} "
              f"{r['tokens_per_s']:>9,.0f}")
    for r in rows[1:]:
        fall, base_fall = r["curve"][0] - r["quarters"][3], base["curve"][0] - base["quarters"][3]
        print(f"{r['kind']} loss fall / {base['kind']}'s: {fall / base_fall:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
