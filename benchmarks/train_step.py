"""Training throughput and peak memory of `mttt pretrain` on this machine.

Each case is a real `mttt pretrain` process (ZeRO 0, one process) on the bundled corpus:
tokens/s is the median over the steps after the first (from metrics.jsonl), peak RSS the
process's maximum resident set. The baseline of each preset and layer type is the first case
(by default the run without time-axis or block checkpointing on the default inner loop), measured
in the same invocation. With --peak-tflops (the device's measured matmul rate) each row also
gets its MFU: the model's training FLOPs per token (planning/flops.py, the inner loop counted)
times tokens/s over that peak.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --presets tiny --steps 5 --json rows.json
    python benchmarks/train_step.py --presets 125m --seq-len 2048 --micro-batch 1 --cases none --peak-tflops measured
    python benchmarks/train_step.py --presets 125m --seq-len 2048 --micro-batch 1 --cases none,compile
    python benchmarks/train_step.py --presets 125m --layer-types linear,mlp --seq-len 2048 --micro-batch 1 \
        --steps 4 --cases "none,blocks compiled"
    python benchmarks/train_step.py --presets 125m --layer-types linear,mlp --dtype bf16 --cases triton,torch \
        --seq-len 2048 --micro-batch 4 --peak-tflops 790
    python benchmarks/train_step.py --presets tiny --patterns T,*,TW --window 512 --seq-lens 2048,8192 \
        --micro-batch 1 --cases none
    python benchmarks/train_step.py --presets tiny,125m --seq-len 2048 --micro-batch 1 --cases carry,reset

--patterns compares layer kinds at the same width and depth: each pattern repeats to the preset's
layer count (T: TTT, *: full attention, W: sliding-window attention of --window positions).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_ttt.models.presets import repeated_pattern

CASES = {"none": [], "time G=4": ["parallel.time_checkpoint_group=4"], "blocks": ["parallel.block_checkpointing=true"],
         "compile": ["train.inner_loop_backend=compile"], "blocks compiled": ["train.compile=true"],
         "manual": ["train.inner_loop_backend=manual"],
         "torch": ["train.inner_loop_backend=torch"],
         "triton": ["train.inner_loop_backend=triton"],
         "carry": ["model.document_boundaries=carry"], "reset": ["model.document_boundaries=reset"]}
"""The variants: checkpointing switches, the inner loop's backend (none: auto; compile: its
mini-batch step through torch.compile), every block through torch.compile (blocks compiled), and whether every
layer restarts at packed documents (reset, the default) or reads across them (carry)."""


def training_flops_per_token(preset: str, layer_type: str, pattern: str, window: int, seq_len: int) -> float:
    """Training FLOPs per token of the preset as `mttt pretrain` builds it on the bundled corpus
    (a hybrid's attention counted at `seq_len`)."""
    from megatron_ttt.config.sections import DataSection
    from megatron_ttt.models.presets import preset as named
    from megatron_ttt.planning.flops import model_flops

    model = named(preset, layer_type, vocab_size=DataSection().bundled_vocab_size, layer_pattern=pattern,
                  attention_window=window)
    return model_flops(model, seq_len)


def _peak(value: str) -> float | str:
    return value if value == "measured" else float(value)


def measured_peak(dtype: str) -> float:
    """This machine's matmul TFLOP/s in the run's dtype, on the device `mttt pretrain` picks."""
    import torch

    from megatron_ttt.planning.machine import matmul_tflops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return matmul_tflops(device, torch.bfloat16 if dtype == "bf16" else torch.float32)


def run_case(preset: str, extra: list[str], steps: int, seq_len: int, micro_batch: int, tmp: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [sys.executable, "-m", "megatron_ttt.cli", "pretrain", f"run_dir={run_dir}", f"model.preset={preset}",
           f"train.steps={steps}", f"data.seq_len={seq_len}", f"data.micro_batch_size={micro_batch}",
           f"data.global_batch_tokens={seq_len * micro_batch}", "data.num_workers=0", "logging.eval_interval=0",
           "logging.tensorboard=false", f"checkpoint.interval={10**6}", "logging.interval=1000", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:]),
            "peak_rss_mib": usage.ru_maxrss / 1024, "final_loss": rows[-1]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,125m")
    parser.add_argument("--layer-types", default="linear")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--cases", default="none,time G=4,blocks,compile",
                        help=f"among {', '.join(CASES)}; the first is the baseline")
    parser.add_argument("--peak-tflops", type=_peak, metavar="TFLOPS|measured",
                        help="the device's matmul rate, for MFU: a number, or measured (a large matmul in the run's "
                             "dtype, same threads, this run)")
    parser.add_argument("--patterns", default="T", help="layer patterns, each repeated to the preset's depth")
    parser.add_argument("--window", type=int, default=4096, help="the sliding window of W layers")
    parser.add_argument("--seq-lens", help="several sequence lengths (overrides --seq-len)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.peak_tflops == "measured":
        args.peak_tflops = measured_peak(args.dtype)
        print(f"peak: {args.peak_tflops * 1e3:.1f} GFLOP/s ({args.dtype} matmul, measured)", file=sys.stderr)
    rows = []
    seq_lens = [int(n) for n in args.seq_lens.split(",")] if args.seq_lens else [args.seq_len]
    grid = [(preset, layer_type, pattern, seq_len, name) for preset in args.presets.split(",")
            for layer_type in args.layer_types.split(",") for pattern in args.patterns.split(",")
            for seq_len in seq_lens for name in args.cases.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for preset, layer_type, pattern, seq_len, name in grid:
            full_pattern = repeated_pattern(pattern, preset)
            extra = [f"model.layer_type={layer_type}", f"train.dtype={args.dtype}", *CASES[name],
                     f"model.layer_pattern={full_pattern}", f"model.attention_window={args.window}"]
            row = {"preset": preset, "layer_type": layer_type, "pattern": full_pattern, "seq_len": seq_len,
                   "variant": name, "dtype": args.dtype}
            row |= run_case(preset, extra, args.steps, seq_len, args.micro_batch, Path(tmp))
            if args.peak_tflops:
                flops = training_flops_per_token(preset, layer_type, full_pattern, args.window, seq_len)
                flops *= row["tokens_per_s"]
                row["mfu"] = flops / (args.peak_tflops * 1e12)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{args.dtype}, ZeRO 0, 1 process, micro-batch {args.micro_batch}, {args.steps} steps; the baseline of "
          f"each preset, layer type and length is its first row")
    print(f"{'preset':<7} {'layer':<7} {'pattern':<14} {'seq':>6} {'variant':<14} {'tokens/s':>10} {'x base':>7} "
          f"{'peak RSS MiB':>13} {'x base':>7} {'MFU':>6}")
    base = {}
    for r in rows:
        b = base.setdefault((r["preset"], r["layer_type"], r["seq_len"]), r)
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        print(f"{r['preset']:<7} {r['layer_type']:<7} {r['pattern']:<14} {r['seq_len']:>6} {r['variant']:<14} "
              f"{r['tokens_per_s']:>10,.0f} {r['tokens_per_s'] / b['tokens_per_s']:>7.2f} {r['peak_rss_mib']:>13,.0f} "
              f"{r['peak_rss_mib'] / b['peak_rss_mib']:>7.2f} {mfu:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
