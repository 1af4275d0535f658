"""The planner's per-rank memory against the measured peak of short real training runs (CPU).

Each case runs `python -m megatron_ttt.planning.measure` (under torchrun for 2 processes): the
real model, DeepSpeed engine and loader of `mttt pretrain`, `--steps` optimizer steps, and each
rank's peak of live tensor bytes from the allocator's events (see that module). The prediction
is `planning.memory.memory(..., on_gpu=False)`: the same terms as on a GPU without the CUDA
context and the allocator margin, which a CPU run does not have. The error is
(predicted - measured) / measured of the largest rank.

    python benchmarks/plan_memory.py --cases tiny --json rows.json   # 16 runs, ~25 s each on 2 idle cores
    python benchmarks/plan_memory.py --cases 125m --only 0 2 3 7 13  # 125m fp32: 1-4 minutes a run
    python benchmarks/plan_memory.py --cases long --only 20 21 22 23 24 --steps 1  # one 8k-token sample, CP 1-4

Context-parallel rows run one step: over more steps the allocator-event sum of a CP rank grows
by 1.5-2 MiB a step at 2k tokens while its resident memory stays flat (150 steps measured), so
some frees of the all-to-all's buffers escape the event stream.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

CASES = {
    "tiny": ("model.preset=tiny", "data.seq_len=256", "data.micro_batch_size=4"),
    "125m": ("model.preset=125m", "data.seq_len=256", "data.micro_batch_size=2"),
    "long": ("model.preset=tiny", "data.seq_len=8192", "data.micro_batch_size=1"),
}
# (nproc, overrides): dtype x ZeRO x TP x checkpointing, each a short run.
LAYOUTS = [
    (1, ("train.dtype=fp32",)),
    (1, ("train.dtype=bf16",)),
    (1, ("train.dtype=fp32", "parallel.time_checkpoint_group=4")),
    (1, ("train.dtype=fp32", "parallel.block_checkpointing=true")),
    (1, ("train.dtype=bf16", "parallel.time_checkpoint_group=4")),
    (1, ("train.dtype=fp32", "model.layer_type=mlp")),
    (1, ("train.dtype=fp32", "model.layer_type=mlp", "parallel.time_checkpoint_group=4")),
    (2, ("train.dtype=fp32", "parallel.zero_stage=1")),
    (2, ("train.dtype=fp32", "parallel.zero_stage=2")),
    (2, ("train.dtype=fp32", "parallel.zero_stage=3")),
    (2, ("train.dtype=bf16", "parallel.zero_stage=1")),
    (2, ("train.dtype=bf16", "parallel.zero_stage=2")),
    (2, ("train.dtype=bf16", "parallel.zero_stage=3")),
    (2, ("train.dtype=fp32", "parallel.tensor_parallel=2")),
    (2, ("train.dtype=fp32", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true")),
    (2, ("train.dtype=bf16", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
         "parallel.time_checkpoint_group=4")),
    (1, ("train.dtype=fp32", "model.layer_pattern=T*")),
    (1, ("train.dtype=bf16", "model.layer_pattern=T*")),
    (1, ("train.dtype=fp32", "model.layer_pattern=T*", "parallel.block_checkpointing=true")),
    (2, ("train.dtype=fp32", "model.layer_pattern=T*", "parallel.tensor_parallel=2",
         "parallel.sequence_parallel=true")),
    (1, ("train.dtype=fp32",)),
    (2, ("train.dtype=fp32", "parallel.context_parallel=2")),
    (4, ("train.dtype=fp32", "parallel.context_parallel=4")),
    (4, ("train.dtype=fp32", "parallel.context_parallel=2", "parallel.tensor_parallel=2",
         "parallel.sequence_parallel=true")),
    (2, ("train.dtype=bf16", "parallel.context_parallel=2", "parallel.time_checkpoint_group=4")),
]
"""16-19 are hybrids: "T*" repeats to the preset's depth (TTT and full attention alternating).
20-24: one sequence split over 1, 2 and 4 context-parallel ranks, CP 2 x TP 2 with SP, and CP 2
in bf16 with time-axis checkpointing (with the "long" case)."""
FIXED = ("data.num_workers=0", "data.bundled_vocab_size=512", "logging.eval_interval=0", "logging.tensorboard=false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_depth(item: str, case: str) -> str:
    """A layer pattern override repeated to the case's number of layers; any other as it is."""
    from megatron_ttt.models.presets import repeated_pattern

    key, _, value = item.partition("=")
    if key != "model.layer_pattern":
        return item
    return f"{key}={repeated_pattern(value, dict(o.split('=', 1) for o in CASES[case])['model.preset'])}"


def overrides_of(case: str, nproc: int, layout: tuple[str, ...], steps: int, run_dir: Path) -> list[str]:
    layout = tuple(to_depth(item, case) for item in layout)
    base = dict(o.split("=", 1) for o in CASES[case] + layout)
    model_parallel = int(base.get("parallel.tensor_parallel", 1)) * int(base.get("parallel.context_parallel", 1))
    tokens = int(base["data.seq_len"]) * int(base["data.micro_batch_size"]) * (nproc // model_parallel)
    return [f"run_dir={run_dir}", f"train.steps={steps}", f"data.global_batch_tokens={tokens}", *FIXED,
            *CASES[case], *layout]


def measure(overrides: list[str], nproc: int, cache: Path, out: Path) -> list[dict]:
    module = ["-m", "megatron_ttt.planning.measure", str(out), *overrides]
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                  f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    env = os.environ | {"MTTT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*launch, *module], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measure {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def check_built(overrides: list[str], built: bool) -> None:
    """The model that ran must be sequence parallel exactly when the row asks for it (with TP > 1):
    otherwise the row would measure one layout and predict another."""
    asked = dict(o.split("=", 1) for o in overrides)
    wanted = asked.get("parallel.sequence_parallel") == "true" and int(asked.get("parallel.tensor_parallel", 1)) > 1
    if built != wanted:
        raise RuntimeError(f"{' '.join(overrides)}: the trained model was built with sequence_parallel={built}, "
                           f"the row asks for {wanted}")


def predict(overrides: list[str], nproc: int, sequence_parallel: bool) -> float:
    from megatron_ttt.config import load_config
    from megatron_ttt.planning.hardware import Assumptions
    from megatron_ttt.planning.measure import planned
    from megatron_ttt.planning.memory import memory

    model, layout = planned(load_config(None, overrides), nproc, sequence_parallel)
    return memory(model, layout, Assumptions(), on_gpu=False).allocated


def label(case: str, nproc: int, layout: tuple[str, ...]) -> str:
    short = {"train.dtype=": "", "parallel.zero_stage=": "Z", "parallel.tensor_parallel=": "TP",
             "parallel.sequence_parallel=true": "SP", "parallel.time_checkpoint_group=": "time G=",
             "parallel.block_checkpointing=true": "blocks", "model.layer_type=": "", "model.layer_pattern=": "",
             "parallel.context_parallel=": "CP"}
    parts = []
    for item in layout:
        for key, name in short.items():
            if item.startswith(key):
                parts.append(name + item[len(key):] if key.endswith("=") else name)
    return f"{case} {nproc}p " + " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="tiny,125m", help="comma-separated: tiny, 125m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="*", help="indices into the layout list")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    jobs = [(c, i, *LAYOUTS[i]) for c in args.cases.split(",") for i in (args.only or range(len(LAYOUTS)))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, index, nproc, layout in tqdm(jobs, desc="runs"):
            overrides = overrides_of(case, nproc, layout, args.steps, Path(tmp) / f"run{len(rows)}")
            ranks = measure(overrides, nproc, Path(tmp) / "cache", Path(tmp) / "peak.json")
            measured = max(r["peak_bytes"] for r in ranks)
            check_built(overrides, ranks[0]["sequence_parallel"])
            predicted = predict(overrides, nproc, ranks[0]["sequence_parallel"])
            rows.append({"case": label(case, nproc, layout), "index": index, "overrides": overrides[1:],
                         "sequence_parallel_built": ranks[0]["sequence_parallel"],
                         "measured_mib": measured / 2**20, "predicted_mib": predicted / 2**20,
                         "error": (predicted - measured) / measured})
            tqdm.write(json.dumps(rows[-1]))
            if args.json:  # after every run: a long matrix keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'configuration':<36} {'measured MiB':>13} {'predicted MiB':>14} {'error':>7}")
    for r in rows:
        print(f"{r['case']:<36} {r['measured_mib']:>13,.1f} {r['predicted_mib']:>14,.1f} {r['error']:>+7.1%}")
    print(f"largest |error|: {max(abs(r['error']) for r in rows):.1%}")


if __name__ == "__main__":
    main()
