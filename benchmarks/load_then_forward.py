"""A forward after a checkpoint load against one without: loading must not slow later compute.

Each case runs in a fresh process (what a load leaves behind is process-wide): build the model,
one warm-up forward, then the case's load, then --repeats timed forwards (median), no grad, B = 1.

    no load                      the baseline
    after load_model             megatron_ttt.checkpoint.model_dir.load_model (what eval, generate
                                 and the conversions call)
    after raw load               megatron-core's dist_checkpointing.load outside
                                 single_threaded_collectives (how load_model loaded before)

The gloo column counts the threads of gloo's workers; one more than the baseline is an OpenMP
team a worker started (see megatron_ttt/parallel/gloo_threads.py).

    python benchmarks/load_then_forward.py                     # 125m TTT-MLP, T = 2048
    python benchmarks/load_then_forward.py --preset tiny --seq-len 256 --layers 12
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("no load", "after load_model", "after raw load")


def _gloo_threads() -> int:
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sum(name == "pt_gloo_runloop" for name in names)


def _model(args, groups):
    from megatron_ttt.models.build import build_model
    from megatron_ttt.models.presets import preset

    overrides = {"num_layers": args.layers} if args.layers else {}
    return build_model(preset(args.preset, args.layer_type, args.backbone, **overrides), groups, init_seed=0).eval()


def run_case(args) -> dict:
    import torch
    from megatron.core import dist_checkpointing

    from megatron_ttt.checkpoint.model_dir import WEIGHTS_DIR, load_model, save_model
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import parallel_groups

    torch.set_num_threads(args.threads)
    with parallel_groups(ParallelLayout()) as groups, torch.no_grad():
        model = _model(args, groups)
        if args.case == "save":
            save_model(model, Path(args.checkpoint))
            return {}
        tokens = torch.randint(0, model.ttt.vocab_size, (1, args.seq_len), generator=torch.Generator().manual_seed(0))
        model(tokens)
        if args.case == "after load_model":
            load_model(Path(args.checkpoint), groups)
        elif args.case == "after raw load":
            dist_checkpointing.load(_model(args, groups).sharded_state_dict(), str(Path(args.checkpoint) / WEIGHTS_DIR))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(tokens)
            times.append(time.perf_counter() - start)
        return {"case": args.case, "forward_s": statistics.median(times), "gloo_threads": _gloo_threads()}


def _spawn(args, case: str, checkpoint: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--checkpoint", str(checkpoint), "--preset", args.preset,
           "--layer-type", args.layer_type, "--backbone", args.backbone, "--seq-len", str(args.seq_len),
           "--layers", str(args.layers), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise SystemExit(f"case {case!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--layer-type", choices=("linear", "mlp"), default="mlp")
    parser.add_argument("--backbone", choices=("mamba", "transformer"), default="mamba")
    parser.add_argument("--layers", type=int, default=0, help="override the preset's layer count (0: keep)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model"
        _spawn(args, "save", checkpoint)
        rows = [_spawn(args, case, checkpoint) for case in CASES]
    base = rows[0]["forward_s"]
    layers = f", {args.layers} layers" if args.layers else ""
    print(f"preset {args.preset} ({args.layer_type}, {args.backbone}{layers}), "
          f"B = 1, T = {args.seq_len}, float32, {args.threads} threads, median of {args.repeats}")
    print(f"{'case':<18} {'forward s':>10} {'vs no load':>11} {'gloo threads':>13}")
    for r in rows:
        print(f"{r['case']:<18} {r['forward_s']:>10.2f} {r['forward_s'] / base:>10.2f}x {r['gloo_threads']:>13}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
