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
    python benchmarks/mfu.py --preset 125m --seq-len 2048 --kinds linear,mlp --compile
    python benchmarks/mfu.py --preset 125m --num-layers 2 --kinds linear,attention \
        --seq-lens 2048,8192,16384,32768 --repeats 1

--kinds attention is every layer full causal attention (`*`) at the preset's width; with it and
linear, the table ends in TTT-Linear's speed over attention's at each length, for scoring
(prefill) and training, and the first length at which TTT-Linear is the faster (the crossover).
Both are per layer what the depth multiplies: --num-layers keeps 32k-token attention runs short.

--compile adds, after each kind's eager rows, the same passes with every block compiled
(models/compile.py; the compile is the untimed first call), their time against the eager row's,
and the largest relative difference of the scored log-probabilities and of the training loss.
"""

import argparse
import json
from pathlib import Path

import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.compile import compile_blocks, compile_seconds
from megatron_ttt.models.presets import preset, repeated, shape
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from megatron_ttt.planning.flops import forward_flops
from megatron_ttt.planning.machine import matmul_size, matmul_tflops, median_seconds
from megatron_ttt.run_options import InnerLoopOptions

KINDS = {"linear": ("linear", "T"), "mlp": ("mlp", "T"), "hybrid": ("linear", "TW"), "attention": ("linear", "*")}
"""Row name: (TTT layer type, layer motif repeated to the preset's depth)."""
DEFAULT_KINDS = ("linear", "mlp", "hybrid")


def measure(name: str, layer_type: str, pattern: str, window: int, seq_len: int, backend: str, repeats: int,
            peak: float, compiled: bool = False) -> list[dict]:
    cfg = preset(name, layer_type, num_layers=len(pattern), layer_pattern=pattern, attention_window=window)
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len + 1), generator=torch.Generator().manual_seed(0))
    flops = forward_flops(cfg, seq_len) * seq_len
    with parallel_groups(ParallelLayout()) as groups:
        model = build_model(cfg, groups, InnerLoopOptions(backend), init_seed=0)
        if compiled:
            # Each kind's model is new: its graphs would join the last one's under dynamo's limit of
            # graphs per function (8), which fullgraph turns into an error.
            torch._dynamo.reset()
            compile_blocks(model)
        compiling_before = compile_seconds()  # after the reset, which clears the count; compiling is lazy
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        outputs = {}

        def score() -> None:
            # One row, scored as one: fixed shapes would pad it to the default batch of 8 rows.
            outputs["logprobs"] = token_logprobs(model.eval(), ids[:, :-1], batch_size=1, fixed_shapes=compiled)

        def first_loss() -> float:
            # The first step's loss, from the initial weights (the timed steps move them).
            with torch.no_grad():
                return model.train()(ids[:, :-1], labels=ids[:, 1:]).mean().item()

        def train() -> None:
            model.train()(ids[:, :-1], labels=ids[:, 1:]).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        score_s = median_seconds(score, repeats)
        loss = first_loss()
        step_s = median_seconds(train, repeats)
    common = {"compiled": compiled, "compile_s": compile_seconds() - compiling_before}
    return [{"pass": "score", "seconds": score_s, "model_tflops": flops / 1e12, "mfu": flops / score_s / 1e12 / peak,
             "logprobs": outputs["logprobs"], **common},
            {"pass": "train", "seconds": step_s, "model_tflops": 3 * flops / 1e12,
             "mfu": 3 * flops / step_s / 1e12 / peak, "loss": loss, **common}]


def against_eager(row: dict, eager: dict) -> dict:
    """The compiled row's time over the eager one's and the largest relative difference of its result."""
    if row["pass"] == "score":
        diff = ((row["logprobs"] - eager["logprobs"]).abs().max() / eager["logprobs"].abs().max()).item()
    else:
        diff = abs(row["loss"] - eager["loss"]) / abs(eager["loss"])
    return {"x_eager": eager["seconds"] / row["seconds"], "rel_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--seq-lens", help="several sequence lengths, comma-separated (overrides --seq-len)")
    parser.add_argument("--num-layers", type=int, default=0, help="the depth (0: the preset's)")
    parser.add_argument("--window", type=int, default=1024, help="the hybrid's attention window")
    parser.add_argument("--backend", default="auto", help="the inner loop's backend")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"among {', '.join(KINDS)}")
    parser.add_argument("--compile", action="store_true", help="also every block compiled, against eager")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak, size = matmul_tflops("cpu", torch.float32), matmul_size("cpu", torch.float32)
    seq_lens = [int(t) for t in args.seq_lens.split(",")] if args.seq_lens else [args.seq_len]
    depth = args.num_layers or shape(args.preset)[0]
    rows = []
    for seq_len in seq_lens:
        for kind in args.kinds.split(","):
            layer_type, motif = KINDS[kind]
            pattern = repeated(motif, depth)
            eager = measure(args.preset, layer_type, pattern, args.window, seq_len, args.backend, args.repeats, peak)
            compiled = [row | against_eager(row, base) for row, base in zip(
                measure(args.preset, layer_type, pattern, args.window, seq_len, args.backend, args.repeats, peak,
                        compiled=True), eager)] if args.compile else []
            rows += [{"kind": kind, "preset": args.preset, "layers": depth, "seq_len": seq_len, **row}
                     for row in eager + compiled]
    print(f"preset {args.preset}, {depth} layers, B=1, float32, {args.threads} threads, inner loop {args.backend}; "
          f"peak: a {size}x{size} matmul at {peak * 1e3:.1f} GFLOP/s, measured in this run")
    print(f"{'kind':<9} {'T':>6} {'pass':<6} {'blocks':<9} {'seconds':>8} {'model TFLOP':>12} {'MFU':>6} "
          f"{'speed-up':>8} {'rel diff':>9} {'compile s':>10}")
    for r in rows:
        versus = f"{r['x_eager']:>8.2f} {r['rel_diff']:>9.1e} {r['compile_s']:>10.0f}" if r["compiled"] else ""
        print(f"{r['kind']:<9} {r['seq_len']:>6} {r['pass']:<6} {'compiled' if r['compiled'] else 'eager':<9} "
              f"{r['seconds']:>8.3f} {r['model_tflops']:>12.3f} {r['mfu']:>6.1%} {versus}")
    best = {}
    for r in rows:
        best[r["kind"], r["pass"]] = max(best.get((r["kind"], r["pass"]), 0.0), r["mfu"])
    for (kind, name), mfu in best.items():
        print(f"{kind} {name} mfu {mfu:.3f}")
    print(f"worst mfu {min(best.values()):.3f}")
    print_crossover([r for r in rows if not r["compiled"]])
    if args.json:
        kept = [{k: v for k, v in r.items() if k not in ("logprobs",)} for r in rows]
        args.json.write_text(json.dumps({"peak_tflops": peak, "rows": kept}, indent=1) + "\n")


def print_crossover(rows: list[dict]) -> None:
    """TTT-Linear's speed over full attention's at each length and pass, where both were measured,
    and the first length from which TTT-Linear stays the faster."""
    seconds = {(r["kind"], r["seq_len"], r["pass"]): r["seconds"] for r in rows}
    lengths = sorted({t for kind, t, _ in seconds if kind == "linear" and ("attention", t, "score") in seconds})
    if not lengths:
        return
    print(f"{'T':>6} {'pass':<6} {'TTT-Linear s':>12} {'attention s':>12} {'TTT speed-up':>12}")
    for name in ("score", "train"):
        ratios = {t: seconds["attention", t, name] / seconds["linear", t, name] for t in lengths}
        for t, ratio in ratios.items():
            print(f"{t:>6} {name:<6} {seconds['linear', t, name]:>12.3f} {seconds['attention', t, name]:>12.3f} "
                  f"{ratio:>12.2f}")
        faster = [t for t in lengths if all(ratios[u] > 1 for u in lengths if u >= t)]
        print(f"crossover {name} {faster[0] if faster else 'none'}")


if __name__ == "__main__":
    main()
