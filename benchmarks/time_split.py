"""Where a model's time goes on the CPU: dense matrix products, the TTT inner loop, the rest.

For one sequence (B=1, --seq-len) of a preset: a scoring forward (no autograd, as `mttt eval
logprobs`, log-softmax included) and a training forward + backward (the mean token loss; no
optimizer step). "total s" is the median of --repeats timed runs after a warm-up; one more run
under the torch profiler gives the shares: dense matmuls are the self time of aten::mm and
aten::addmm (the projections, MLPs and head; the inner loop's own products are bmm / baddbmm),
the inner loop the mixers' "ttt_inner_loop" ranges (its forward only: the backward's ops carry
no range, so the training row leaves it out). "if only matmuls": 1 / the matmul share, the most
that any change leaving the dense matmuls alone could give.

    python benchmarks/time_split.py --preset 125m --seq-len 2048
    python benchmarks/time_split.py --preset 125m --seq-len 2048 --backend compile --layer-type mlp
"""

import argparse

import torch
from torch.profiler import profile

from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from megatron_ttt.planning.machine import median_seconds
from megatron_ttt.run_options import InnerLoopOptions

DENSE = ("aten::mm", "aten::addmm")


def split(fn, repeats: int) -> tuple[float, float, float]:
    """(median seconds, dense matmul share, inner-loop forward share) of fn."""
    seconds = median_seconds(fn, repeats)
    with profile() as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    dense = sum(e.self_cpu_time_total for e in events if e.key in DENSE)
    inner = sum(e.cpu_time_total for e in events if e.key == "ttt_inner_loop")
    return seconds, dense / total, inner / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--layer-type", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--backbone", choices=("mamba", "transformer"), default="mamba")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--backend", default="auto", help="the inner loop's backend (auto: the eager dual form)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset, args.layer_type, args.backbone)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    with parallel_groups(ParallelLayout()) as groups:
        model = build_model(cfg, groups, InnerLoopOptions(args.backend), init_seed=0)
        rows = [("score", *split(lambda: token_logprobs(model.eval(), ids[:, :-1]), args.repeats)),
                ("train", *split(lambda: model.train()(ids[:, :-1], labels=ids[:, 1:]).mean().backward(),
                                 args.repeats)[:2], None)]
    print(f"preset {args.preset} ({args.layer_type}, {args.backbone}), B=1, T={args.seq_len}, backend {args.backend}, "
          f"float32, {args.threads} threads")
    print(f"{'pass':<6} {'total s':>8} {'matmul':>7} {'inner loop':>11} {'rest':>6} {'if only matmuls':>16}")
    for name, total, dense, inner in rows:
        loop, rest = ("-", "-") if inner is None else (f"{inner:.0%}", f"{1 - dense - inner:.0%}")
        print(f"{name:<6} {total:>8.2f} {dense:>7.0%} {loop:>11} {rest:>6} {1 / dense:>15.2f}x")


if __name__ == "__main__":
    main()
