"""Final validation loss of the optimizer and schedule pairs a campaign chooses between, at equal
steps on the same data: each pair is a real `mttt pretrain` run (one process, ZeRO 0) of --preset
on the bundled corpus, the first pair (AdamW + cosine, the default) the baseline.

    python benchmarks/optimizers.py
    python benchmarks/optimizers.py --steps 100 --global-batch-tokens 4096 --json rows.json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pretrain_runs import final_losses, pretrain

PAIRS = (("adamw", "cosine"), ("adamw", "wsd"), ("muon", "cosine"), ("muon", "wsd"))


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
            pretrain(run_dir, args.preset, args.steps, args.global_batch_tokens, args.seed,
                     [f"optimizer.name={optimizer}", f"optimizer.schedule={schedule}"])
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
