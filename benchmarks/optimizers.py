"""Final validation loss of the optimizer and schedule pairs a campaign chooses between, at equal
steps on the same data: each pair is a real `mttt pretrain` run (one process, ZeRO 0) of --preset
on the bundled corpus, the first pair (AdamW + cosine, the default) the baseline.

    python benchmarks/optimizers.py
    python benchmarks/optimizers.py --steps 100 --global-batch-tokens 4096 --json rows.json
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAIRS = (("adamw", "cosine"), ("adamw", "wsd"), ("muon", "cosine"), ("muon", "wsd"))


def final_losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"train_loss": rows[-1]["train_loss"], "val_loss": rows[-1]["val_loss"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--global-batch-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer, schedule in PAIRS:
            run_dir = Path(tmp) / f"{optimizer}-{schedule}"
            subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "pretrain", f"run_dir={run_dir}",
                            f"model.preset={args.preset}", f"train.steps={args.steps}", f"train.seed={args.seed}",
                            f"data.global_batch_tokens={args.global_batch_tokens}", "logging.tensorboard=false",
                            f"logging.eval_interval={args.steps}", f"checkpoint.interval={args.steps}",
                            f"optimizer.name={optimizer}", f"optimizer.schedule={schedule}"],
                           check=True, capture_output=True)
            rows.append({"optimizer": optimizer, "schedule": schedule, **final_losses(run_dir)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]["val_loss"]
    print(f"preset {args.preset}, bundled corpus, {args.steps} steps of {args.global_batch_tokens} tokens, the "
          "default lr for both optimizers, wsd with its default decay (last 20%, 1-sqrt)")
    print(f"{'optimizer':<9} {'schedule':<8} {'final train':>11} {'final val':>9} {'val - base':>10}")
    for r in rows:
        print(f"{r['optimizer']:<9} {r['schedule']:<8} {r['train_loss']:>11.4f} {r['val_loss']:>9.4f} "
              f"{r['val_loss'] - base:>+10.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
