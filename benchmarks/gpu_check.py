"""Validate a machine with one GPU: the kernels' tests on the device, their speed, `mttt pretrain`'s
throughput and MFU, and the planner's memory against the measured peak. Writes every result as
JSON and a markdown table into one folder. Without a GPU the steps that need one are skipped
(and say so); the others run at small sizes, which shows the whole check works.

Each step is one of the project's benchmarks or tests, run as its own process:

| step | on a GPU | without one |
|---|---|---|
| environment | versions, the device, its measured bf16 matmul rate (the MFU peak) | the same, on the CPU |
| kernel tests | tests/kernels on the device (fp32, bf16, tf32) and the attention op's (FlexAttention windows) | skipped (CI runs them in the interpreter and on the CPU) |
| kernel speed | benchmarks/kernels.py at T = 2k, 8k, 32k | skipped |
| pretrain | 125m, bf16, TTT-Linear and TTT-MLP, Triton and torch inner loops | tiny, fp32, TTT-Linear, torch inner loop |
| planner memory | 125m: bf16, bf16 + time-axis G=4, TTT-MLP fp32 + G=4 | the first of them at tiny |

    python benchmarks/gpu_check.py --out gpu-check/          # scripts/gpu_check.sh runs this
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_ttt.planning.machine import matmul_tflops

ROOT = Path(__file__).resolve().parent.parent
GPU = torch.cuda.is_available()
LIMITS = {"kernel_tests": 110, "kernel_speed": 110, "pretrain": 180, "planner_memory": 80}
"""Seconds each step may take: 8 minutes in all. A step over its limit is stopped and reported."""
PLANNER_LAYOUTS = ["1", "4", "6"]
"""benchmarks/plan_memory.py's layouts: bf16; bf16, time-axis G=4; TTT-MLP fp32, G=4 (one process each)."""


def run(name: str, command: list[str], out: Path, timeout: int) -> dict:
    """Run one step's process; its output goes to OUT/<name>.log."""
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=os.environ | {"PYTHONWARNINGS": "ignore"})
            status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"failed (over {timeout} s)"
    log_tail = (out / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(command[1:]), "last_line": log_tail[0]}


def skipped(name: str, why: str) -> dict:
    return {"step": name, "status": f"skipped: {why}", "seconds": 0.0, "command": "", "last_line": ""}


def peak_tflops() -> float:
    """The device's dense matmul rate now (bf16 on a GPU, fp32 on the CPU): the MFU peak."""
    return matmul_tflops("cuda", torch.bfloat16) if GPU else matmul_tflops("cpu", torch.float32)


def environment() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name() if GPU else "cpu",
            "capability": ".".join(map(str, torch.cuda.get_device_capability())) if GPU else None,
            "matmul_tflops": round(peak_tflops(), 2), "matmul_dtype": "bf16" if GPU else "fp32"}


def steps(out: Path, peak: float) -> Iterator[dict]:
    """Each step's result as it finishes."""
    py = sys.executable
    if GPU:
        xdist = subprocess.run([py, "-c", "import xdist"], capture_output=True).returncode == 0
        yield run("kernel_tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels",
                                   "tests/ops/test_attention.py",
                                   *(["-n", "8"] if xdist else [])], out, LIMITS["kernel_tests"])
        yield run("kernel_speed", [py, "benchmarks/kernels.py", "--seq-lens", "2048,8192,32768", "--repeats", "3",
                                   "--json", str(out / "kernel_speed.json")], out, LIMITS["kernel_speed"])
    else:
        yield skipped("kernel_tests", "no GPU")
        yield skipped("kernel_speed", "no GPU")
    pretrain = (["--presets", "125m", "--layer-types", "linear,mlp", "--dtype", "bf16", "--cases", "triton,torch",
                 "--seq-len", "2048", "--micro-batch", "4", "--steps", "4"] if GPU else
                ["--presets", "tiny", "--layer-types", "linear", "--dtype", "fp32", "--cases", "torch",
                 "--steps", "4"])
    yield run("pretrain", [py, "benchmarks/train_step.py", *pretrain, "--peak-tflops", str(peak), "--json",
                           str(out / "pretrain.json")], out, LIMITS["pretrain"])
    planner = ["--cases", "125m", "--only", *PLANNER_LAYOUTS] if GPU else ["--cases", "tiny", "--only",
                                                                          PLANNER_LAYOUTS[0]]
    yield run("planner_memory", [py, "benchmarks/plan_memory.py", *planner, "--json", str(out / "planner_memory.json")],
              out, LIMITS["planner_memory"])


PERCENT = {"mfu", "error"}
"""Columns shown as percentages."""


def cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column in PERCENT:
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows])


def report(env: dict, results: list[dict], out: Path) -> str:
    """The markdown summary: the environment, each step's status, then each step's own rows."""
    parts = [f"# GPU check: {env['device']}", "", table([env], list(env)), "",
             table(results, ["step", "status", "seconds"])]
    sections = {"kernel_speed.json": ("Kernel speed", ["op", "impl", "T", "fwd_ms", "fwd_bwd_ms", "fwd_tflops",
                                                       "fwd_bwd_speedup_vs_twin"]),
                "pretrain.json": ("mttt pretrain", ["preset", "layer_type", "variant", "dtype", "tokens_per_s", "mfu",
                                                    "final_loss"]),
                "planner_memory.json": ("Planner memory", ["case", "measured_mib", "predicted_mib", "error"])}
    for name, (title, columns) in sections.items():
        if (out / name).exists():
            rows = json.loads((out / name).read_text())
            rows = rows["speed"] if isinstance(rows, dict) else rows
            parts += ["", f"## {title}", "", table(rows, columns)]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder for the results (created)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"{env['device']}: torch {env['torch']}, triton {env['triton']}, matmul {env['matmul_tflops']} TFLOP/s")
    results = []
    for result in steps(args.out, env["matmul_tflops"]):
        results.append(result)
        print(f"{result['step']:<15} {result['status']:<30} {result['seconds']:>7.1f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps({"environment": env, "steps": results}, indent=1) + "\n")
    (args.out / "README.md").write_text(report(env, results, args.out))
    print(f"results: {args.out / 'README.md'}, {args.out / 'results.json'}")
    if any(r["status"].startswith("failed") for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
