"""ATen ops issued per mini-batch of the inner loop (forward, backward) and per decode step.

On a CPU each op costs microseconds of dispatch whatever its size, and on a GPU each is a kernel
launch, so at small head sizes the count, not the arithmetic, sets the speed. Counted with the
torch profiler: the ATen ops called from Python or by autograd (not the ops those call inside).

    per mini-batch   the count at 16 mini-batches minus the count at 8, over 8: what every
                     further mini-batch adds (per-call set-up excluded); ttt_dual, B=1, H=12, d=64,
                     with the autograd step and (TTT-Linear) the step with its backward written out
    decode step      one ttt_decode_step call, and one token through a whole `tiny` model with
                     its cache (every layer, the head included), divided by its layers: eager, and
                     through the CompiledDecoder (the ATen ops left beside its fused kernels)

    python benchmarks/op_counts.py
    python benchmarks/op_counts.py --json ops.json
"""

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from megatron_ttt.models.build import build_model
from megatron_ttt.models.compiled_decode import CompiledDecoder
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.presets import preset
from megatron_ttt.ops import TTTInputs, TTTState, ttt_decode_step, ttt_dual
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from ttt_layer import make_inputs

B, H, D, MINI_BATCH = 1, 12, 64, 16


def count_ops(fn) -> int:
    """Top-level ATen ops `fn` issues (an op's own inner ops are not counted again)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def inner_loop_counts(kind: str, blocks: int, backend: str) -> tuple[int, int]:
    """(forward ops, backward ops) of ttt_dual over `blocks` mini-batches."""
    leaves = make_inputs(kind, B, H, blocks * MINI_BATCH, D, MINI_BATCH)
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    out = {}

    def forward():
        z, final = ttt_dual(TTTInputs(q, k, v, lr, offset, ln_w, ln_b), TTTState.initial(tuple(weights), B),
                            mini_batch_size=MINI_BATCH, backend=backend)
        out["loss"] = z.sum() + sum(w.sum() for w in final.weights)

    return count_ops(forward), count_ops(lambda: out["loss"].backward())


def decode_counts(kind: str) -> tuple[int, float, float]:
    """(ops of one ttt_decode_step, ops per layer of one token through the tiny model, eager and compiled)."""
    leaves = [x.detach()[:, :, :1] if x.dim() == 4 else x.detach() for x in make_inputs(kind, B, H, 1, D, MINI_BATCH)]
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    lr = lr[:, :, :1]
    step = count_ops(lambda: ttt_decode_step(TTTInputs(q, k, v, lr, offset, ln_w, ln_b),
                                             TTTState.initial(tuple(weights), B), mini_batch_size=MINI_BATCH))
    with parallel_groups(ParallelLayout()) as groups, torch.no_grad():
        model = build_model(preset("tiny", kind, "mamba"), groups, init_seed=0).eval()
        cache = InferenceCache.empty(len(model.blocks))
        model.last_logits(torch.zeros(1, 5, dtype=torch.long), cache)
        token = count_ops(lambda: model.last_logits(torch.zeros(1, 1, dtype=torch.long), cache))
        decoder = CompiledDecoder(model, cache)
        decoder(torch.zeros(1, 1, dtype=torch.long))  # compiles
        compiled = count_ops(lambda: decoder(torch.zeros(1, 1, dtype=torch.long)))
    return step, token / len(model.blocks), compiled / len(model.blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    inner, decode = [], []
    for kind, backend in (("linear", "torch"), ("linear", "manual"), ("mlp", "torch")):
        (f8, b8), (f16, b16) = inner_loop_counts(kind, 8, backend), inner_loop_counts(kind, 16, backend)
        inner.append({"layer_type": kind, "backend": backend, "forward_per_mini_batch": (f16 - f8) / 8,
                      "backward_per_mini_batch": (b16 - b8) / 8})
    for kind in ("linear", "mlp"):
        step, per_layer, compiled = decode_counts(kind)
        decode.append({"layer_type": kind, "decode_step": step, "decode_token_per_layer": per_layer,
                       "compiled_decode_token_per_layer": compiled})
    print(f"ATen ops (top level), ttt_dual at B={B}, H={H}, d={D}, b={MINI_BATCH}")
    print(f"{'layer':<7} {'backend':<9} {'fwd / mini-batch':>17} {'bwd / mini-batch':>17}")
    for r in inner:
        print(f"{r['layer_type']:<7} {r['backend']:<9} {r['forward_per_mini_batch']:>17.1f} "
              f"{r['backward_per_mini_batch']:>17.1f}")
    print("decode: tiny preset")
    print(f"{'layer':<7} {'decode step':>12} {'token / layer':>14} {'compiled token / layer':>23}")
    for r in decode:
        print(f"{r['layer_type']:<7} {r['decode_step']:>12} {r['decode_token_per_layer']:>14.1f} "
              f"{r['compiled_decode_token_per_layer']:>23.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(inner + decode, indent=1) + "\n")


if __name__ == "__main__":
    main()
