"""Shared memory the fused TTT kernels need, per GPU architecture, found by compiling them.

Compiling needs no GPU, so this runs anywhere (minutes: each kernel compiles in 20-200 s on a
CPU). A kernel whose need exceeds the architecture's shared memory per block cannot launch
there; `ttt_inner_loop` then falls back to the PyTorch dual form under backend="auto".

    python benchmarks/kernel_resources.py --head-dims 32,64 --json docs/kernel_resources.json
"""

import argparse
import json
import os

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("kernel_resources.py compiles the kernels: unset TRITON_INTERPRET")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from megatron_ttt.kernels.resources import shared_memory  # noqa: E402
from megatron_ttt.kernels.ttt_linear.kernels import ttt_linear_bwd_kernel, ttt_linear_fwd_kernel  # noqa: E402
from megatron_ttt.kernels.ttt_mlp import hidden_chunk  # noqa: E402
from megatron_ttt.kernels.ttt_mlp.kernels import ttt_mlp_bwd_kernel, ttt_mlp_fwd_kernel  # noqa: E402

ARCHS = {80: ("A100", 166912), 90: ("H100/H200", 232448)}
"""Compute capability -> (GPUs, opt-in shared memory per block in bytes, from CUDA's tables)."""
KERNELS = {"linear": (ttt_linear_fwd_kernel, ttt_linear_bwd_kernel), "mlp": (ttt_mlp_fwd_kernel, ttt_mlp_bwd_kernel)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dims", default="32,64")
    parser.add_argument("--ops", default="linear,mlp")
    parser.add_argument("--archs", default="80,90")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    cases = [(op, d, arch, kernel) for op in args.ops.split(",") for d in map(int, args.head_dims.split(","))
             for arch in map(int, args.archs.split(",")) for kernel in KERNELS[op]]
    rows = []
    for op, d, arch, kernel in tqdm(cases, desc="compiling"):
        meta = {"D": d, "BL": 16, "G": 4, "PREC": "tf32"} | ({"HID": 4 * d, "HC": hidden_chunk(d, 4 * d)} if op == "mlp" else {})
        need = shared_memory(kernel, torch.bfloat16, tuple(sorted(meta.items())), GPUTarget("cuda", arch, 32))
        gpus, available = ARCHS[arch]
        rows.append({"kernel": kernel.fn.__name__, "d": d, "arch": f"sm_{arch} ({gpus})", "shared_bytes": need,
                     "available_bytes": available, "fits": need <= available})
    print("kernel | d | arch | shared KiB | available KiB | fits")
    for r in rows:
        print(f"{r['kernel']} | {r['d']} | {r['arch']} | {r['shared_bytes'] / 1024:.1f} | "
              f"{r['available_bytes'] / 1024:.0f} | {'yes' if r['fits'] else 'NO'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
