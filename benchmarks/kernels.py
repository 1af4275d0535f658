"""The fused Triton TTT kernels: accuracy against the twin, and speed against the twin and attention.

Accuracy: relative RMS error (||kernel - twin|| / ||twin||) of the output, the final state and
every gradient, the twin (`ttt_dual`) in float64, the kernel in fp32. Without a GPU the kernels
run in Triton's interpreter, so keep the sizes small there.

Speed (CUDA only): forward and forward+backward time of the Triton kernels vs the PyTorch twin
vs causal `scaled_dot_product_attention` (same B, H, d, bf16), achieved TFLOP/s and GB/s, and
the device's ceilings measured in the same run (a large bf16 matmul, a large copy);
flash-linear-attention's `chunk_ttt_linear` when its package is installed (other semantics:
per-token scalar lr, no inner LayerNorm residual, no MLP).

    python benchmarks/kernels.py --accuracy-only                      # CPU: the error table
    python benchmarks/kernels.py --seq-lens 2048,8192,32768 --json docs/kernels_h100.json
"""

import argparse
import json
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

from tqdm import tqdm  # noqa: E402
from ttt_layer import make_inputs  # noqa: E402  (the sibling benchmark's inputs at a layer's scales)

from megatron_ttt.ops import TTTInputs, TTTState, ttt_dual, ttt_inner_loop  # noqa: E402
from megatron_ttt.planning.machine import copy_gbps, matmul_tflops, median_seconds  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LEAF_NAMES = ["q", "k", "v", "lr", "token_offset", "ln_weight", "ln_bias"]
STATE_NAMES = {"linear": ["W", "b"], "mlp": ["W1", "b1", "W2", "b2"]}


def run_op(backend: str, leaves: list[torch.Tensor], b: int, group: int) -> list[torch.Tensor]:
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    inputs, state = TTTInputs(q, k, v, lr, offset, ln_w, ln_b), TTTState.initial(tuple(weights), q.shape[0])
    if backend == "twin":
        z, state = ttt_dual(inputs, state, mini_batch_size=b, time_checkpoint_group=group)
    else:
        z, state = ttt_inner_loop(inputs, state, mini_batch_size=b, time_checkpoint_group=group, backend="triton")
    return [z, *state.weights, *(state.grads or ())]


def accuracy_rows(kind: str, T: int, b: int, d: int, H: int) -> list[dict]:
    """One row per output and gradient: its relative RMS error against the float64 twin."""
    base = make_inputs(kind, 1, H, T, d, b)
    results = {}
    for backend, dtype in (("twin", torch.float64), ("triton", torch.float32)):
        leaves = [x.detach().to(DEVICE, dtype).requires_grad_() for x in base]
        outputs = run_op(backend, leaves, b, group=0 if backend == "twin" else 4)
        cotangent = torch.Generator().manual_seed(1)
        loss = sum((y * torch.randn(y.shape, generator=cotangent, dtype=torch.float64).to(y)).sum() for y in outputs)
        results[backend] = [*outputs, *torch.autograd.grad(loss, leaves)]
    state = STATE_NAMES[kind]
    steps = state if T % b else []  # an incomplete last mini-batch also returns its step sums
    names = ["z", *(f"final {n}" for n in state), *(f"step sum {n}" for n in steps),
             *(f"d{n}" for n in LEAF_NAMES), *(f"d{n}0" for n in state)]
    rows = []
    for name, got, want in zip(names, results["triton"], results["twin"]):
        err = ((got.double().cpu() - want.cpu()).norm() / want.norm().clamp_min(1e-300)).item()
        rows.append({"op": kind, "T": T, "b": b, "d": d, "tensor": name, "rel_rms_error": err})
    return rows


def ttt_flops_per_token(kind: str, d: int, b: int) -> float:
    """Forward FLOPs per token and head of the dual form: every matmul, 2 FLOPs per multiply-add."""
    if kind == "linear":
        # k W, q W, the step K^T (lr G): 3 x 2d^2; q k^T and A G over the mini-batch: 2 x 2bd.
        return 6 * d * d + 4 * b * d
    h = 4 * d
    # k W1, X2 W2, G2 W2^T, q W1, Xb2 W2, two steps: 7 x 2dh; q k^T, A1 G1, Xb2 X2^T, A2 G2.
    return 14 * d * h + 2 * b * d + 2 * b * h + 2 * b * h + 2 * b * d


def ceilings() -> dict:
    """The device's bf16 matmul TFLOP/s and copy GB/s, measured now."""
    return {"matmul_tflops": matmul_tflops(DEVICE, torch.bfloat16), "copy_gbps": copy_gbps(DEVICE)}


def speed_rows(kind: str, B: int, H: int, T: int, d: int, b: int, group: int, repeats: int) -> list[dict]:
    leaves = [x.detach().to(DEVICE, torch.bfloat16).requires_grad_() for x in make_inputs(kind, B, H, T, d, b)]
    qkv = [x.detach().to(DEVICE, torch.bfloat16).requires_grad_() for x in leaves[:3]]
    impls = {
        "triton": lambda: run_op("triton", leaves, b, group)[0],
        "twin": lambda: run_op("twin", leaves, b, group)[0],
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True),
    }
    impls.update(fla_impl(kind, qkv, leaves, b))
    flops = {"sdpa": 4 * T * T / 2 * d}  # causal: half of QK^T and PV, per (batch, head)
    flops.update({name: T * ttt_flops_per_token(kind, d, b) for name in impls if name != "sdpa"})
    io_bytes = 4 * B * H * T * d * 2  # q, k, v read, z written, bf16
    rows = []
    for name, fn in impls.items():
        fwd = median_seconds(lambda: fn(), repeats, DEVICE)
        fwd_bwd = median_seconds(lambda: fn().float().sum().backward(), repeats, DEVICE)
        rows.append({"op": kind, "impl": name, "B": B, "H": H, "T": T, "d": d, "fwd_ms": fwd * 1e3,
                     "fwd_bwd_ms": fwd_bwd * 1e3, "fwd_tflops": B * H * flops[name] / fwd / 1e12,
                     "fwd_gbps": io_bytes / fwd / 1e9})
    twin = next(r for r in rows if r["impl"] == "twin")
    for row in rows:
        row["fwd_bwd_speedup_vs_twin"] = twin["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    return rows


def fla_impl(kind: str, qkv: list[torch.Tensor], leaves: list[torch.Tensor], b: int) -> dict:
    """flash-linear-attention's chunk_ttt_linear, if installed (TTT-Linear only, other semantics)."""
    if kind != "linear":
        return {}
    try:
        from fla.ops.ttt import chunk_ttt_linear
    except ImportError:
        return {}
    q, k, v = (x.transpose(1, 2) for x in qkv)  # fla takes [B, T, H, d]
    eta = leaves[3].detach().transpose(1, 2).unsqueeze(-1)
    ln_w, ln_b = leaves[5], leaves[6]
    return {"fla chunk_ttt_linear": lambda: chunk_ttt_linear(q, k, v, ln_w, ln_b, eta, scale=1.0,
                                                             chunk_size=b)[0].transpose(1, 2)}


def print_table(rows: list[dict], columns: list[str]) -> None:
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--accuracy-len", type=int, default=63)
    parser.add_argument("--accuracy-head-dim", type=int, help="default: --head-dim on a GPU, 16 in the interpreter")
    parser.add_argument("--seq-lens", default="2048,8192,32768")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--time-checkpoint-group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    d_acc = args.accuracy_head_dim or (args.head_dim if DEVICE == "cuda" else 16)
    accuracy = [row for kind in ("linear", "mlp")
                for row in accuracy_rows(kind, args.accuracy_len, args.mini_batch, d_acc, H=2)]
    print(f"accuracy vs the float64 twin on {DEVICE}" + ("" if DEVICE == "cuda" else " (Triton interpreter)"))
    print_table(accuracy, ["op", "T", "b", "d", "tensor", "rel_rms_error"])
    result = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "accuracy": accuracy}
    if not args.accuracy_only:
        result["ceilings"] = ceilings()
        print(f"\nceilings on {result['device']}: {result['ceilings']}")
        cases = [(kind, T) for T in map(int, args.seq_lens.split(",")) for kind in ("linear", "mlp")]
        result["speed"] = [row for kind, T in tqdm(cases, desc="speed") for row in speed_rows(
            kind, args.batch, args.heads, T, args.head_dim, args.mini_batch, args.time_checkpoint_group, args.repeats)]
        print_table(result["speed"], ["op", "impl", "T", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_speedup_vs_twin",
                                      "fwd_tflops", "fwd_gbps"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
