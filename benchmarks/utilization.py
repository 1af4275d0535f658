"""Matmul utilisation of each layer kind's inner loop on the CPU: the op's forward+backward FLOPs
per second as a fraction of this machine's fp32 matmul rate, measured in the same run with the
same threads (a 2048^3 matmul timed just before each row). Both times are the best of their
repeats: on a shared machine the least disturbed run is the closest to the machine's own rate.

Per-layer shapes, batch 1:
- linear, mlp: TTT at 125m (hidden 768, 12 heads of 64, mini-batch 16), the dual form the models
  run on a CPU (ops.ttt_inner_loop); FLOPs from planning/flops.py (layer_flops(...).ttt).
- lact: LaCT's 760M config (lact_llm/configs/760M_lact_swiglu_nh4_fwlow_rank_momentum_muon.json:
  hidden 1536, num_lact_heads 4 of 384, inter_multi 1, lact_chunk_size 2048, momentum and Muon),
  ops.lact.lact_swiglu; FLOPs from planning/flops.py (lact_forward_flops: 18 D H per token and
  head plus Newton-Schulz). `--lact-compile` also runs it with its chunk step compiled.
Forward+backward counts three times the forward's matmuls (the backward takes both operands'
gradients), as model_flops does. Each row prints `<kind> <T> utilization <fraction>`.

    python benchmarks/utilization.py                    # T = 2048, 8192, every kind
    python benchmarks/utilization.py --seq-lens 2048 --kinds lact --json rows.json
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_ttt.models.presets import preset
from megatron_ttt.ops import TTTInputs, TTTState, ttt_inner_loop
from megatron_ttt.ops.lact import lact_swiglu
from megatron_ttt.planning.flops import lact_forward_flops, layer_flops

TTT_HEADS, TTT_HEAD_DIM, TTT_MINI_BATCH = 12, 64, 16
LACT_HEADS, LACT_HEAD_DIM, LACT_CHUNK = 4, 384, 2048


def matmul_rate(n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an fp32 [n,n] x [n,n] matmul: the best of `repeats` (the least disturbed)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ttt_case(kind: str, T: int) -> tuple[Callable[[], None], float]:
    """TTT-Linear or TTT-MLP's inner loop at 125m: a forward+backward and its FLOPs."""
    H, d, b = TTT_HEADS, TTT_HEAD_DIM, TTT_MINI_BATCH
    g = torch.Generator().manual_seed(0)
    widths = [d, d] if kind == "linear" else [d, 4 * d, d]
    weights = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        weights += [0.02 * torch.randn(H, w_in, w_out, generator=g), torch.zeros(H, w_out)]
    q, k, v = (torch.randn(1, H, T, d, generator=g) for _ in range(3))
    lr = torch.sigmoid(torch.randn(1, H, T, generator=g)) / d
    leaves = [x.requires_grad_() for x in (q, k, v, lr, torch.ones(H, d), torch.zeros(H, d), *weights)]

    def step() -> None:
        q, k, v, lr, ln_w, ln_b, *weights = leaves
        inputs = TTTInputs(q, k, v, lr, torch.zeros(b), ln_w, ln_b)
        z, _ = ttt_inner_loop(inputs, TTTState.initial(tuple(weights), 1), mini_batch_size=b, final_state=False)
        z.sum().backward()

    model = preset("125m", kind)
    return step, 3 * T * layer_flops(model).ttt


def lact_case(T: int, compile: bool) -> tuple[Callable[[], None], float]:
    """LaCT's 760M fast-weight heads with momentum and Muon: a forward+backward and its FLOPs."""
    N, D, C = LACT_HEADS, LACT_HEAD_DIM, LACT_CHUNK
    g = torch.Generator().manual_seed(0)
    w0, w1, w2 = (torch.randn(N, D, D, generator=g) / D**0.5 for _ in range(3))
    q, k, v = (torch.randn(N, T, D, generator=g) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    # softplus(x + inv_softplus(1e-3)): LaCT's lr parameterisation around its base lr.
    lrs = [torch.nn.functional.softplus(torch.randn(N, T, 1, generator=g) - 6.9) for _ in range(3)]
    momentum = torch.sigmoid(torch.randn(N, T, 1, generator=g))
    leaves = [x.requires_grad_() for x in (w0, w1, w2, q, k, v, *lrs, momentum)]

    def step() -> None:
        o = lact_swiglu(*leaves[:9], C, True, leaves[9], compile=compile)
        o.sum().backward()

    return step, 3 * N * lact_forward_flops(T, C, D, D, D, use_muon=True)


def measure(kind: str, T: int, repeats: int) -> dict:
    if kind.startswith("lact"):
        step, flops = lact_case(T, compile=kind == "lact+compile")
    else:
        step, flops = ttt_case(kind, T)
    first = _seconds(step)
    rate = matmul_rate()
    seconds = min(_seconds(step) for _ in range(repeats))
    achieved = flops / seconds
    return {"kind": kind, "T": T, "fwd_bwd_s": seconds, "first_call_s": first, "gflop": flops / 1e9,
            "gflops": achieved / 1e9, "matmul_gflops": rate / 1e9, "utilization": achieved / rate,
            "threads": torch.get_num_threads()}


def print_table(rows: list[dict]) -> None:
    print(f"{'kind':13} {'T':>5} {'fwd+bwd s':>10} {'GFLOP':>8} {'GFLOP/s':>8} {'matmul GFLOP/s':>15} "
          f"{'utilization':>12} {'x linear':>9}")
    linear = {r["T"]: r["utilization"] for r in rows if r["kind"] == "linear"}
    for r in rows:
        ratio = f"{r['utilization'] / linear[r['T']]:.1f}" if r["T"] in linear else "-"
        print(f"{r['kind']:13} {r['T']:>5} {r['fwd_bwd_s']:>10.2f} {r['gflop']:>8.1f} {r['gflops']:>8.1f} "
              f"{r['matmul_gflops']:>15.1f} {r['utilization']:>12.3f} {ratio:>9}")
    for r in rows:
        print(f"{r['kind']} {r['T']} utilization {r['utilization']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192])
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=["linear", "mlp", "lact"])
    parser.add_argument("--lact-compile", action="store_true", help="add rows with LaCT's chunk step compiled")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    kinds = args.kinds + (["lact+compile"] if args.lact_compile else [])
    rows = []
    for T in args.seq_lens:
        for kind in kinds:
            rows.append(measure(kind, T, args.repeats))
            print(f"measured {kind} {T}: {rows[-1]['fwd_bwd_s']:.2f} s", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
