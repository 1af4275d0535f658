"""Where a model's time goes on the CPU: dense matrix products, the TTT inner loop, the rest.

For one sequence (B=1, --seq-len) of a preset: a scoring forward (no autograd, as `mttt eval
logprobs`, log-softmax included) and a training forward + backward (the mean token loss; no
optimizer step), each profiled once after a warm-up. The matmul time is the profiler's self time
of aten::mm and aten::addmm: the projections, MLPs and head (the inner loop's own products are
bmm / baddbmm). The inner loop is timed alone, without the profiler: `ttt_dual` at the model's
head shapes, times its layers. "if only matmuls": total / matmul, the most that any change
leaving the dense matmuls alone could give.

    python benchmarks/time_split.py --preset 125m --seq-len 2048
    python benchmarks/time_split.py --preset 125m --seq-len 2048 --backend compile --layer-type mlp
"""

import argparse
import time

import torch
from torch.profiler import profile

from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.ops import TTTState, ttt_dual
from megatron_ttt.ops.dispatch import DUAL_STEPS
from megatron_ttt.parallel.setup import ModelParallel, parallel_groups
from megatron_ttt.run_options import InnerLoopOptions
from ttt_layer import make_inputs

DENSE = ("aten::mm", "aten::addmm")


def profiled(fn) -> tuple[float, float]:
    """(wall seconds, dense matmul seconds) of one call after a warm-up."""
    fn()
    with profile() as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    return wall, sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in DENSE) / 1e6


def inner_loop_seconds(cfg, seq_len: int, step: str, backward: bool) -> float:
    """One layer's ttt_dual at the model's shapes (median of 3 after a warm-up), times its layers."""
    q, k, v, lr, offset, ln_w, ln_b, *weights = make_inputs(cfg.layer_type, 1, cfg.num_heads, seq_len,
                                                            cfg.head_dim, cfg.mini_batch_size)

    def run():
        with torch.set_grad_enabled(backward):
            z, final = ttt_dual(q, k, v, lr, offset, ln_w, ln_b, TTTState.initial(tuple(weights), 1),
                                mini_batch_size=cfg.mini_batch_size, step=step)
            if backward:
                (z.sum() + sum(w.sum() for w in final.weights)).backward()

    run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[1] * cfg.num_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--layer-type", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--backbone", choices=("mamba", "transformer"), default="mamba")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--backend", default="auto", help="the inner loop's backend (auto: the eager dual form)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset, args.layer_type, args.backbone)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    step = DUAL_STEPS.get(args.backend, "autograd")
    with parallel_groups(ModelParallel()):
        model = build_model(cfg, InnerLoopOptions(args.backend), init_seed=0)
        score = profiled(lambda: token_logprobs(model.eval(), ids[:, :-1]))
        train = profiled(lambda: model.train()(ids[:, :-1], labels=ids[:, 1:]).mean().backward())
    rows = [("score", *score, inner_loop_seconds(cfg, args.seq_len, step, False)),
            ("train", *train, inner_loop_seconds(cfg, args.seq_len, step, True))]
    print(f"preset {args.preset} ({args.layer_type}, {args.backbone}), B=1, T={args.seq_len}, backend {args.backend}, "
          f"float32, {args.threads} threads")
    print(f"{'pass':<6} {'total s':>8} {'matmul s':>9} {'share':>6} {'inner loop s':>13} {'share':>6} "
          f"{'rest s':>7} {'if only matmuls':>16}")
    for name, total, dense, inner in rows:
        print(f"{name:<6} {total:>8.2f} {dense:>9.2f} {dense / total:>6.0%} {inner:>13.2f} {inner / total:>6.0%} "
              f"{total - dense - inner:>7.2f} {total / dense:>15.2f}x")


if __name__ == "__main__":
    main()
