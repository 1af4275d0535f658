"""Model FLOPs utilisation of each layer kind, against this machine's measured matmul rate.

For TTT-Linear, TTT-MLP and a TW hybrid (TTT and sliding-window attention layers alternating) of
--preset, one sequence of --seq-len tokens: "score" is a forward without autograd, log-softmax
included (as `mttt eval logprobs`); "train" a training step's math: forward, the mean token loss,
backward and an AdamW step (one process, no DeepSpeed, no data loader). MFU is the model's FLOPs
(the planner's count, planning/flops.py, inner loop included: the forward's for score, three times
it for train) over the median time, as a fraction of one large matmul's rate in the same dtype and
threads, measured in the same run (planning/machine.py).

    python benchmarks/mfu.py --preset 125m --seq-len 2048
    python benchmarks/mfu.py --preset tiny --seq-len 256 --repeats 1 --json rows.json
"""

import argparse
import json
from pathlib import Path

import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset, repeated_pattern
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from megatron_ttt.planning.flops import forward_flops
from megatron_ttt.planning.machine import matmul_size, matmul_tflops, median_seconds
from megatron_ttt.run_options import InnerLoopOptions

KINDS = {"linear": ("linear", "T"), "mlp": ("mlp", "T"), "hybrid": ("linear", "TW")}
"""Row name: (TTT layer type, layer motif repeated to the preset's depth)."""


def measure(name: str, layer_type: str, pattern: str, window: int, seq_len: int, backend: str, repeats: int,
            peak: float) -> list[dict]:
    cfg = preset(name, layer_type, layer_pattern=pattern, attention_window=window)
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len + 1), generator=torch.Generator().manual_seed(0))
    flops = forward_flops(cfg, seq_len) * seq_len
    with parallel_groups(ParallelLayout()) as groups:
        model = build_model(cfg, groups, InnerLoopOptions(backend), init_seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

        def train() -> None:
            model.train()(ids[:, :-1], labels=ids[:, 1:]).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        score = median_seconds(lambda: token_logprobs(model.eval(), ids[:, :-1]), repeats)
        step = median_seconds(train, repeats)
    return [{"pass": "score", "seconds": score, "model_tflops": flops / 1e12, "mfu": flops / score / 1e12 / peak},
            {"pass": "train", "seconds": step, "model_tflops": 3 * flops / 1e12,
             "mfu": 3 * flops / step / 1e12 / peak}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--window", type=int, default=1024, help="the hybrid's attention window")
    parser.add_argument("--backend", default="auto", help="the inner loop's backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak, size = matmul_tflops("cpu", torch.float32), matmul_size("cpu", torch.float32)
    rows = []
    for kind, (layer_type, motif) in KINDS.items():
        pattern = repeated_pattern(motif, args.preset)
        for row in measure(args.preset, layer_type, pattern, args.window, args.seq_len, args.backend, args.repeats,
                           peak):
            rows.append({"kind": kind, "preset": args.preset, "seq_len": args.seq_len, **row})
    print(f"preset {args.preset}, B=1, T={args.seq_len}, float32, {args.threads} threads, inner loop {args.backend}; "
          f"peak: a {size}x{size} matmul at {peak * 1e3:.1f} GFLOP/s, measured in this run")
    print(f"{'kind':<7} {'pass':<6} {'seconds':>8} {'model TFLOP':>12} {'MFU':>6}")
    for r in rows:
        print(f"{r['kind']:<7} {r['pass']:<6} {r['seconds']:>8.3f} {r['model_tflops']:>12.3f} {r['mfu']:>6.1%}")
    for r in rows:
        print(f"{r['kind']} {r['pass']} mfu {r['mfu']:.3f}")
    print(f"worst mfu {min(r['mfu'] for r in rows):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"peak_tflops": peak, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
