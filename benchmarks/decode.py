"""Decoding cost per token vs prefix length: constant with the cache, growing without it.

For each prefix length P: prefill P random tokens into an inference cache (dual form; tokens/s),
then decode --tokens new tokens one at a time (ms/token, median). The baseline, in the same run,
is what a model without a cache pays for one new token: a full forward over the P + 1 tokens
(`last_logits` without a cache, median of --baseline-repeats). Preset `tiny`, float32, TP=1.

    python benchmarks/decode.py
    python benchmarks/decode.py --prefixes 1024,32768 --layer-type mlp --json decode.json
    python benchmarks/decode.py --layer-pattern TW --window 512     # a hybrid: TTT + sliding window
"""

import argparse
import json
import statistics
import time

import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.presets import preset
from megatron_ttt.parallel.setup import ModelParallel, destroy_parallel, init_parallel


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def measure(model, prefix: int, tokens: int, baseline_repeats: int, seed: int) -> dict:
    ids = torch.randint(0, model.ttt.vocab_size, (1, prefix + 1), generator=torch.Generator().manual_seed(seed))
    cache = InferenceCache.empty(len(model.blocks))
    prefill = timed(lambda: model.last_logits(ids[:, :prefix], cache))
    token = ids[:, prefix:]
    steps = []
    for _ in range(tokens):
        steps.append(timed(lambda: model.last_logits(token, cache)))
        token = torch.zeros_like(token)
    baseline = statistics.median(timed(lambda: model.last_logits(ids)) for _ in range(baseline_repeats))
    decode = statistics.median(steps)
    return dict(prefix=prefix, prefill_s=prefill, prefill_tok_s=prefix / prefill, decode_ms=1e3 * decode,
                baseline_ms=1e3 * baseline, speedup=baseline / decode, cache_kib=cache.nbytes() / 2**10)


def print_table(rows: list[dict]) -> None:
    print(f"{'prefix':>7} {'prefill s':>10} {'prefill tok/s':>14} {'decode ms/tok':>14} "
          f"{'no-cache ms/tok':>16} {'speedup':>9} {'cache KiB':>10}")
    for r in rows:
        print(f"{r['prefix']:>7} {r['prefill_s']:>10.3f} {r['prefill_tok_s']:>14,.0f} {r['decode_ms']:>14.3f} "
              f"{r['baseline_ms']:>16.1f} {r['speedup']:>8.0f}x {r['cache_kib']:>10.1f}")
    first, last = rows[0], rows[-1]
    print(f"decode ms/token at prefix {last['prefix']} / at {first['prefix']}: "
          f"{last['decode_ms'] / first['decode_ms']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens per prefix (median time)")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--layer-type", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--backbone", choices=("mamba", "transformer"), default="mamba")
    parser.add_argument("--layer-pattern", default="", help="a hybrid's layer pattern (the tiny preset has 2 layers)")
    parser.add_argument("--window", type=int, default=4096, help="the sliding window of its W layers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_parallel(ModelParallel())
    try:
        cfg = preset("tiny", args.layer_type, args.backbone, layer_pattern=args.layer_pattern,
                     attention_window=args.window)
        model = build_model(cfg).eval()
        measure(model, 64, 4, 1, seed=0)  # warm-up
        rows = [measure(model, int(p), args.tokens, args.baseline_repeats, seed=i)
                for i, p in enumerate(args.prefixes.split(","))]
    finally:
        destroy_parallel()
    pattern = f", layer pattern {args.layer_pattern}, window {args.window}" if args.layer_pattern else ""
    print(f"preset tiny ({args.layer_type}, {args.backbone}{pattern}), float32, {args.threads} threads")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r | {"layer_type": args.layer_type, "backbone": args.backbone,
                            "layer_pattern": args.layer_pattern, "window": args.window} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
