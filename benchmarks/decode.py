"""Decoding cost per token vs prefix length: constant with the cache, growing without it.

For each prefix length P: prefill P random tokens into an inference cache (dual form; tokens/s),
then decode --tokens new tokens one at a time (ms/token, median). The baseline, in the same run,
is what a model without a cache pays for one new token: a full forward over the P + 1 tokens
(`last_logits` without a cache, median of --baseline-repeats). TP=1.

--weights fp32,bf16,int8 repeats every prefix with the projections and head stored in each format
(models/stored_weights.py; fp32 first, the baseline). The floor column is the bytes a step must read
(models/stored_weights.bytes_per_token) over this machine's copy bandwidth, measured at the start of
the same run (planning/machine.copy_gbps); `x floor` is the decode time over it.

With --compiled, a CompiledDecoder (models/compiled_decode.py: one compiled graph of the
whole decode step) continues the same prefilled cache with the same tokens, in rounds of ten steps
alternating with the eager ones, so both columns share the machine's load; its one-time compile is timed apart.

    python benchmarks/decode.py
    python benchmarks/decode.py --prefixes 256,4096 --compiled --preset 125m --tokens 30
    python benchmarks/decode.py --prefixes 1024,32768 --layer-type mlp --json decode.json
    python benchmarks/decode.py --layer-pattern TW --window 512     # a hybrid: TTT + sliding window
    python benchmarks/decode.py --preset 125m --prefixes 256 --tokens 20 --weights fp32,bf16,int8 --compiled
"""

import argparse
import json
import statistics
import time

import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.compiled_decode import CompiledDecoder
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.presets import preset
from megatron_ttt.models.stored_weights import WEIGHT_FORMATS, bytes_per_token, store_weights
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from megatron_ttt.planning.machine import copy_gbps


ROUND = 10
"""Decode steps run in a row by one side before the other takes its turn."""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def measure(model, prefix: int, tokens: int, baseline_repeats: int, seed: int, compiled: bool,
            gbps: float = float("nan")) -> dict:
    ids = torch.randint(0, model.ttt.vocab_size, (1, prefix + 1), generator=torch.Generator().manual_seed(seed))
    cache = InferenceCache.empty(len(model.blocks))
    prefill = timed(lambda: model.last_logits(ids[:, :prefix], cache))
    decoder = CompiledDecoder(model, cache) if compiled else None
    steps, compiled_steps = [], []
    for start in range(0, tokens, ROUND):
        # The first token is the sample's own, then zeros; in rounds, so each side runs warm.
        round_tokens = [ids[:, prefix:] if t == 0 else torch.zeros_like(ids[:, :1])
                        for t in range(start, min(start + ROUND, tokens))]
        steps += [timed(lambda: model.last_logits(token, cache)) for token in round_tokens]
        if decoder is not None:
            compiled_steps += [timed(lambda: decoder(token)) for token in round_tokens]
    token = torch.zeros_like(ids[:, :1])
    baseline = statistics.median(timed(lambda: model.last_logits(ids)) for _ in range(baseline_repeats))
    decode = statistics.median(steps)
    row = dict(prefix=prefix, prefill_s=prefill, prefill_tok_s=prefix / prefill, decode_ms=1e3 * decode,
               baseline_ms=1e3 * baseline, speedup=baseline / decode, cache_kib=cache.nbytes() / 2**10)
    row |= dict(read_mb=bytes_per_token(model, cache.nbytes()) / 1e6)
    row |= dict(floor_ms=row["read_mb"] / gbps, floor_x=row["decode_ms"] / (row["read_mb"] / gbps))
    if decoder is not None:
        row |= dict(compiled_ms=1e3 * statistics.median(compiled_steps),
                    compiled_x=decode / statistics.median(compiled_steps), matmul_ms=matmul_ms(decoder, token))
        row["compiled_floor_x"] = row["compiled_ms"] / row["floor_ms"]
    return row


def matmul_ms(decoder: CompiledDecoder, token: torch.Tensor, steps: int = 10) -> float:
    """Time per token in the compiled step's matrix products (torch profiler, self time of
    aten::mm / bmm / baddbmm / addmm, and the int8 weight-only kernel): the weights' reads, which no
    fusion removes."""
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            decoder(token)
    matmuls = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::_weight_int8pack_mm")
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in matmuls) / 1e3 / steps


@torch.no_grad()
def first_compiled_step(model) -> float:
    """Seconds of the first compiled decode step: the compile, paid once per process and model."""
    cache = InferenceCache.empty(len(model.blocks))
    model.last_logits(torch.zeros(1, 3, dtype=torch.int64), cache)
    decoder = CompiledDecoder(model, cache)
    return timed(lambda: decoder(torch.zeros(1, 1, dtype=torch.int64)))


def print_table(rows: list[dict]) -> None:
    compiled = "compiled_ms" in rows[0]
    print(f"{'weights':>7} {'prefix':>7} {'prefill s':>10} {'prefill tok/s':>14} {'decode ms/tok':>14} "
          f"{'no-cache ms/tok':>16} {'speedup':>9} {'cache KiB':>10} {'MB/tok':>8} {'floor ms':>9} {'x floor':>8}"
          + (f" {'compiled ms/tok':>16} {'x eager':>8} {'of which matmul':>16} {'x floor':>8}" if compiled else ""))
    for r in rows:
        print(f"{r['weights']:>7} {r['prefix']:>7} {r['prefill_s']:>10.3f} {r['prefill_tok_s']:>14,.0f} "
              f"{r['decode_ms']:>14.3f} {r['baseline_ms']:>16.1f} {r['speedup']:>8.0f}x {r['cache_kib']:>10.1f} "
              f"{r['read_mb']:>8.1f} {r['floor_ms']:>9.3f} {r['floor_x']:>7.2f}x"
              + (f" {r['compiled_ms']:>16.3f} {r['compiled_x']:>7.2f}x {r['matmul_ms']:>16.3f} "
                 f"{r['compiled_floor_x']:>7.2f}x" if compiled else ""))
    fp32 = [r for r in rows if r["weights"] == rows[0]["weights"]]
    first, last = fp32[0], fp32[-1]
    print(f"decode ms/token at prefix {last['prefix']} / at {first['prefix']}: "
          f"{last['decode_ms'] / first['decode_ms']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens per prefix (median time)")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--compiled", action="store_true", help="also decode through a CompiledDecoder")
    parser.add_argument("--layer-type", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--backbone", choices=("mamba", "transformer"), default="mamba")
    parser.add_argument("--layer-pattern", default="", help="a hybrid's layer pattern (one letter per layer)")
    parser.add_argument("--window", type=int, default=4096, help="the sliding window of its W layers")
    parser.add_argument("--weights", default="fp32", help=f"comma-separated stored formats ({', '.join(WEIGHT_FORMATS)})"
                        ", a set of rows each; the first is the baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups = init_parallel(ParallelLayout())
    try:
        cfg = preset(args.preset, args.layer_type, args.backbone, layer_pattern=args.layer_pattern,
                     attention_window=args.window)
        gbps = copy_gbps()
        rows, compile_s = [], {}
        for fmt in args.weights.split(","):
            model = store_weights(build_model(cfg, groups, init_seed=0).eval(), fmt)
            if args.compiled:
                compile_s[fmt] = first_compiled_step(model)
            measure(model, 64, 4, 1, seed=0, compiled=args.compiled)  # warm-up
            rows += [measure(model, int(p), args.tokens, args.baseline_repeats, seed=i, compiled=args.compiled,
                             gbps=gbps) | dict(weights=fmt) for i, p in enumerate(args.prefixes.split(","))]
    finally:
        destroy_parallel()
    pattern = f", layer pattern {args.layer_pattern}, window {args.window}" if args.layer_pattern else ""
    print(f"preset {args.preset} ({args.layer_type}, {args.backbone}{pattern}), {args.threads} threads, "
          f"copy bandwidth {gbps:.1f} GB/s (this run)")
    for fmt, seconds in compile_s.items():
        print(f"compiled decode step ({fmt}): first call (compile + one token) {seconds:.1f} s")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r | {"preset": args.preset, "layer_type": args.layer_type, "backbone": args.backbone,
                            "layer_pattern": args.layer_pattern, "window": args.window} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
