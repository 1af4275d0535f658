"""Forward+backward time and memory of the TTT inner loop: primal vs dual vs dual + time-axis
checkpointing vs dual with its mini-batch step compiled, on the CPU.

Each case runs in a fresh process, so its peak RSS is its own. "saved MiB" counts the distinct
storages the autograd graph holds for the backward (torch.autograd.graph.saved_tensors_hooks),
inputs included; "peak RSS MiB" is the growth of the process's peak resident set over the
forward+backward, above what the inputs already took; "first call s" is the first forward+backward,
which for dual+compile includes compiling its step (less when torch's on-disk compile cache
already holds it).

    python benchmarks/ttt_layer.py                      # the full table (a few minutes)
    python benchmarks/ttt_layer.py --seq-lens 512 --json rows.json
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

from megatron_ttt.ops import TTTInputs, TTTState, ttt_dual, ttt_primal

IMPLS = {
    "primal": lambda *a, b: ttt_primal(*a, mini_batch_size=b),
    "dual": lambda *a, b: ttt_dual(*a, mini_batch_size=b),
    "dual+ckpt4": lambda *a, b: ttt_dual(*a, mini_batch_size=b, time_checkpoint_group=4),
    "dual+compile": lambda *a, b: ttt_dual(*a, mini_batch_size=b, backend="compile"),
    "dual+manual": lambda *a, b: ttt_dual(*a, mini_batch_size=b, backend="manual"),
}

# The primal form holds b per-token copies of the inner weights per mini-batch for its backward:
# TTT-MLP at T=8192 would need ~23 GiB (5.8 GiB measured at 2048).
PRIMAL_MAX_LEN = {"linear": 8192, "mlp": 2048}


def make_inputs(kind: str, B: int, H: int, T: int, d: int, b: int) -> list[torch.Tensor]:
    """Leaves at a real layer's scales: lr = base_lr * sigmoid(.) / d, W0 ~ N(0, 0.02)."""
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    base_lr = 1.0 if kind == "linear" else 0.1
    widths = [d, d] if kind == "linear" else [d, 4 * d, d]
    weights = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        weights += [0.02 * randn(H, w_in, w_out), torch.zeros(H, w_out)]
    leaves = [randn(B, H, T, d), randn(B, H, T, d), randn(B, H, T, d), base_lr * torch.sigmoid(randn(B, H, T)) / d,
              torch.zeros(b), torch.ones(H, d), torch.zeros(H, d), *weights]
    return [x.requires_grad_() for x in leaves]


def forward(impl: str, leaves: list[torch.Tensor], b: int) -> torch.Tensor:
    """The op and a scalar of its output and final state (so the backward covers both)."""
    q, k, v, lr, offset, ln_w, ln_b, *weights = leaves
    state = TTTState.initial(tuple(weights), q.shape[0])
    z, final = IMPLS[impl](TTTInputs(q, k, v, lr, offset, ln_w, ln_b), state, b=b)
    return z.sum() + sum(w.sum() for w in final.weights)


def forward_backward(impl: str, leaves: list[torch.Tensor], b: int) -> None:
    forward(impl, leaves, b).backward()


def saved_bytes(impl: str, leaves: list[torch.Tensor], b: int) -> int | None:
    """Bytes of the distinct storages the forward saves for the backward, measured by hooks (the
    graph keeps them all alive, so storages are not reused). Recomputation inside the backward is
    transient and not counted. None for the primal form: torch.func refuses saved-tensor hooks."""
    if impl == "primal":
        return None
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = forward(impl, leaves, b)
    loss.backward()
    return sum(storages.values())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(impl: str, kind: str, T: int, B: int, H: int, d: int, b: int, repeats: int) -> dict:
    """One measurement, in this process: peak RSS first (before anything else grows it)."""
    torch.set_num_threads(torch.get_num_threads())
    leaves = make_inputs(kind, B, H, T, d, b)
    before = rss_bytes()
    first = time.perf_counter()
    forward_backward(impl, leaves, b)
    first = time.perf_counter() - first
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(impl, leaves, b)
        times.append(time.perf_counter() - start)
    saved = saved_bytes(impl, leaves, b)
    return {
        "impl": impl, "kind": kind, "B": B, "H": H, "T": T, "d": d, "b": b,
        "fwd_bwd_ms": 1000 * statistics.median(times), "first_call_s": first,
        "saved_MiB": None if saved is None else saved / 2**20,
        "peak_rss_MiB": max(peak_rss, 0) / 2**20,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'kind':6} {'T':>5} {'impl':12} {'fwd+bwd ms':>11} {'x dual':>7} {'first call s':>13} {'saved MiB':>10} "
          f"{'x dual':>7} {'peak RSS MiB':>13}")
    dual = {(r["kind"], r["T"]): r for r in rows if r["impl"] == "dual"}
    for r in rows:
        ref = dual.get((r["kind"], r["T"]))
        t_ratio = f"{r['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.2f}" if ref else "-"
        has_saved = ref and r["saved_MiB"] is not None
        m_ratio = f"{r['saved_MiB'] / ref['saved_MiB']:.2f}" if has_saved else "-"
        saved = "-" if r["saved_MiB"] is None else f"{r['saved_MiB']:.1f}"
        print(f"{r['kind']:6} {r['T']:>5} {r['impl']:12} {r['fwd_bwd_ms']:>11.1f} {t_ratio:>7} "
              f"{r['first_call_s']:>13.2f} {saved:>10} {m_ratio:>7} {r['peak_rss_MiB']:>13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=[512, 2048, 8192])
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=["linear", "mlp"])
    parser.add_argument("--impls", type=lambda s: s.split(","), default=list(IMPLS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = dict(B=args.batch, H=args.heads, d=args.head_dim, b=args.mini_batch, repeats=args.repeats)

    if args.case:
        impl, kind, T = args.case.split(",")
        print(json.dumps(run_case(impl, kind, int(T), **shape)))
        return
    cases = [(i, k, T) for k in args.kinds for T in args.seq_lens for i in args.impls
             if i != "primal" or T <= PRIMAL_MAX_LEN[k]]
    rows = []
    for impl, kind, T in tqdm(cases, desc="cases", unit="case"):
        cmd = [sys.executable, __file__, "--case", f"{impl},{kind},{T}"] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
