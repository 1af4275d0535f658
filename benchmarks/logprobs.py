"""Next-token log-prob throughput of a model on the CPU: ours vs the reference implementation.

Ours: `token_logprobs` (what `mttt eval logprobs` runs) on a preset (`tiny` by default) at TP=1,
float32.
The reference: the public `TTTForCausalLM` (a `ttt.py` you provide; it is not part of this
repository) loading the same weights, exported by `mttt convert mttt-to-hf`, run in its own
Python (which needs `transformers`). Both score the same token ids; the table gives the time per
1k tokens (median of --repeats after one warm-up) and the largest log-prob difference.

    python benchmarks/logprobs.py
    python benchmarks/logprobs.py --reference-code /path/to/ttt-lm-pytorch --reference-python /path/to/python
    python benchmarks/logprobs.py --preset 125m --shapes 1x2048 --layer-types linear,mlp ...
    python benchmarks/logprobs.py --backends auto,manual,compile ...   # one row per inner-loop backend
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megatron_ttt.models.parameters import to_full
from megatron_ttt.checkpoint.reference_io import write_reference
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.models.presets import preset
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from megatron_ttt.run_options import InnerLoopOptions

REFERENCE_SIDE = """
import json, statistics, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from ttt import TTTForCausalLM
torch.set_num_threads(int(sys.argv[5]))
model = TTTForCausalLM.from_pretrained(sys.argv[2]).eval()
ids = torch.from_numpy(np.load(sys.argv[3]))
times = []
with torch.no_grad():
    for _ in range(int(sys.argv[4]) + 1):
        start = time.perf_counter()
        logits = model(input_ids=ids).logits
        times.append(time.perf_counter() - start)
lp = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
np.save(sys.argv[3] + ".lp.npy", lp.numpy())
print(json.dumps({"seconds": statistics.median(times[1:])}))
"""


def time_ours(model, ids: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        lp = token_logprobs(model, ids, batch_size=ids.shape[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), lp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4x512,4x2048,1x8192", help="batch x tokens, comma separated")
    parser.add_argument("--layer-types", default="linear,mlp")
    parser.add_argument("--backbone", default="mamba")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab-size", type=int, default=4096, help="0: the preset's (32000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="auto", help="inner-loop backends of ours, comma separated")
    parser.add_argument("--reference-code", type=Path, help="directory holding the reference ttt.py")
    parser.add_argument("--reference-python", default=sys.executable, help="a Python with transformers installed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from megatron_ttt.models.build import build_model

    rows = []
    with parallel_groups(ParallelLayout()) as groups, tempfile.TemporaryDirectory() as tmp:
        for layer_type in args.layer_types.split(","):
            vocab = {"vocab_size": args.vocab_size} if args.vocab_size else {}
            cfg = preset(args.preset, layer_type, args.backbone, **vocab)
            backends = args.backends.split(",")
            models = {b: build_model(cfg, groups, InnerLoopOptions(b), init_seed=0) for b in backends}
            model = models[backends[0]]
            ref_dir = Path(tmp) / f"ref-{layer_type}"
            write_reference(ref_dir, cfg, to_full([{n: p.detach() for n, p in model.named_parameters()}], cfg))
            for shape in args.shapes.split(","):
                n, t = map(int, shape.split("x"))
                ids = torch.randint(0, cfg.vocab_size, (n, t), generator=torch.Generator().manual_seed(1))
                mine = {b: time_ours(m, ids, args.repeats) for b, m in models.items()}
                row = {"layer_type": layer_type, "backbone": args.backbone, "batch": n, "tokens": t}
                ref_lp = None
                if args.reference_code:
                    ids_path = Path(tmp) / f"ids-{layer_type}-{shape}.npy"
                    np.save(ids_path, ids.numpy())
                    out = subprocess.run([args.reference_python, "-c", REFERENCE_SIDE, str(args.reference_code),
                                          str(ref_dir), str(ids_path), str(args.repeats), str(torch.get_num_threads())],
                                         check=True, capture_output=True, text=True)
                    ref_seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
                    ref_lp = torch.from_numpy(np.load(f"{ids_path}.lp.npy"))
                    row["reference_ms_per_1k"] = 1e3 * ref_seconds / (n * t) * 1e3
                for backend, (seconds, lp) in mine.items():
                    rows.append(row | {"backend": backend, "ours_ms_per_1k": 1e3 * seconds / (n * t) * 1e3})
                    if ref_lp is not None:
                        rows[-1]["max_abs_logprob_diff"] = (ref_lp - lp).abs().max().item()
                    print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{args.preset} preset ({args.backbone} backbone), TP=1, float32, {torch.get_num_threads()} threads")
    print(f"{'layer':<7} {'batch x T':>11} {'backend':>8} {'ours ms/1k tok':>15} {'reference ms/1k':>16} {'x ref':>6} "
          f"{'max |dlogp|':>12}")
    for r in rows:
        ref = r.get("reference_ms_per_1k")
        print(f"{r['layer_type']:<7} {str(r['batch']) + ' x ' + str(r['tokens']):>11} {r['backend']:>8} "
              f"{r['ours_ms_per_1k']:>15.1f} "
              + (f"{ref:>16.1f} {ref / r['ours_ms_per_1k']:>6.2f} {r['max_abs_logprob_diff']:>12.1e}" if ref else
                 f"{'-':>16} {'-':>6} {'-':>12}"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
