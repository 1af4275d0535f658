"""`mttt eval logprobs|perplexity|harness|long-context` and `mttt generate`: the parsers. Each
command is its own module, imported when it runs (megatron-core loads slowly), so `mttt --help`
starts fast."""

import argparse


def _logprobs(args: argparse.Namespace) -> int:
    from megatron_ttt.eval.logprobs import run_logprobs

    return run_logprobs(args)


def _perplexity(args: argparse.Namespace) -> int:
    from megatron_ttt.eval.perplexity_run import run_perplexity

    return run_perplexity(args)


def _harness(args: argparse.Namespace) -> int:
    from megatron_ttt.eval.harness_run import run_harness

    return run_harness(args)


class _ListExamples(argparse.Action):
    """`--list-examples`: prints the shipped example tasks and exits while parsing, as --help does,
    so it needs no --checkpoint or --tasks."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from megatron_ttt.eval.harness_run import example_lines

        print("\n".join(example_lines()))
        parser.exit()


def _long_context(args: argparse.Namespace) -> int:
    from megatron_ttt.eval.long_context_run import run_long_context

    return run_long_context(args)


def _generate(args: argparse.Namespace) -> int:
    from megatron_ttt.eval.generate_run import run_generate

    return run_generate(args)


def _list_of(kind, what: str):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return parse


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a model directory, a training checkpoint (RUN/checkpoints/step-N) or a run directory (its "
                        "latest checkpoint)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="TP size (launch with torchrun for > 1)")


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, metavar="MODEL", help="sentencepiece .model (default: DIR/tokenizer"
                   ".model, else the one named by --data)")
    p.add_argument("--data", default=None, metavar="MANIFEST", help="the training data's manifest, for its tokenizer")


def _compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each block (a one-time compile per batch shape, printed; batches padded to "
                        "a fixed shape)")


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    evals = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_command", metavar="WHAT",
                                                                                 required=True)
    p = evals.add_parser("logprobs", help="next-token log-probabilities of token id sequences")
    _checkpoint_args(p)
    p.add_argument("--input", required=True, metavar="IDS.npy", help="int64 [N, T] token ids")
    p.add_argument("--output", required=True, metavar="LP.npy", help="float32 [N, T-1]")
    p.add_argument("--batch-size", type=int, default=8)
    _compile_arg(p)
    p.set_defaults(func=_logprobs)

    p = evals.add_parser("perplexity", help="loss and perplexity (overall and by token position) on a validation split")
    _checkpoint_args(p)
    p.add_argument("--data", required=True, nargs="+", metavar="MANIFEST",
                   help="a prepared dataset's manifest.json (or its dir); several score each one's validation split "
                        "and their blend")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="the blend's weight of each --data manifest, as data.blend's (default: equal)")
    p.add_argument("--context", type=_list_of(int, "token counts like 2048,8192"), default=None, metavar="C1,C2,...",
                   help="context lengths (default: the first dataset's seq-len); longer ones join consecutive samples")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward on each data-parallel rank")
    p.add_argument("--max-samples", type=int, default=None, help="windows per context at most")
    p.add_argument("--context-parallel", type=int, default=1, metavar="CP",
                   help="ranks splitting each window's positions, for windows longer than one rank holds "
                        "(launch with torchrun; TP x CP divides the processes, the rest share the windows)")
    p.add_argument("--buckets", choices=("log", "linear"), default="log", help="position buckets: doubling or equal")
    p.add_argument("--num-buckets", type=int, default=32, help="buckets per context with --buckets linear")
    p.add_argument("--out", default="eval-perplexity", metavar="DIR", help="where the CSVs and the plot go")
    _compile_arg(p)
    p.set_defaults(func=_perplexity)

    p = evals.add_parser("harness", help="lm-evaluation-harness tasks (needs megatron-ttt[eval]); offline",
                         description="Runs tasks of lm-eval's registry whose data is available locally, the "
                                     "example tasks shipped with megatron-ttt (--list-examples) and tasks from "
                                     "local YAML files (--include-path). See docs/eval.md.")
    _checkpoint_args(p)
    _tokenizer_args(p)
    p.add_argument("--tasks", required=True, metavar="T1,T2", help="task names (or groups), comma-separated")
    p.add_argument("--include-path", default=None, metavar="DIR",
                   help="a folder of local task YAML files, searched with the examples")
    p.add_argument("--list-examples", action=_ListExamples,
                   help="print the example tasks and their folder, then exit")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per prompt (default: the task's)")
    p.add_argument("--limit", type=float, default=None, help="documents per task at most (a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=8, help="loglikelihood requests per forward")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens a loglikelihood request keeps at most, its context cut from the left (default: all)")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling and generation seeds")
    p.add_argument("--output", default="eval-harness", metavar="DIR", help="where the harness writes its results")
    p.set_defaults(func=_harness)

    p = evals.add_parser("long-context", help="passkey and needle-in-a-haystack retrieval by length and depth",
                         description="Synthetic prompts from the model's tokenizer (no downloads); exact-match "
                                     "accuracy and the answer's log-probability per cell, as CSV and heatmaps. See "
                                     "docs/eval.md.")
    _checkpoint_args(p)
    _tokenizer_args(p)
    p.add_argument("--lengths", type=_list_of(int, "token counts"), default=[1024, 4096], metavar="L1,L2",
                   help="prompt lengths in tokens (default 1024,4096)")
    p.add_argument("--depths", type=_list_of(float, "fractions"), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   metavar="D1,D2", help="needle depths, 0 (start) to 1 (end) (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--tasks", type=_list_of(str, "task names"), default=["passkey", "needle"], metavar="T1,T2",
                   help="passkey, needle (default both)")
    p.add_argument("--trials", type=int, default=4, help="prompts per cell, each its own needle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval-long-context", metavar="DIR", help="where the CSV, heatmaps and settings go")
    p.set_defaults(func=_long_context)


def add_generate_parser(sub: argparse._SubParsersAction, copy_gbps) -> None:
    """`copy_gbps`: () -> this machine's copy bandwidth in GB/s (planning/machine.py, a layer above)."""
    p = sub.add_parser("generate", help="continue a prompt (prefill, then constant-memory decoding)")
    _checkpoint_args(p)
    p.add_argument("--prompt", required=True, metavar="TEXT")
    _tokenizer_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="decode through one compiled graph of the model (TTT layers only, TP 1): 3.9x faster per "
                        "token than eager at the tiny preset, 1.7x at 125m on a CPU (docs/benchmarks.md), after a "
                        "compile of 5-20 s at the first step (reported apart)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --compile on a CUDA machine: capture the compiled decode step as a CUDA graph, replayed "
                        "per token (the model moves to the GPU)")
    p.add_argument("--weights", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="how the projections and head are stored for decoding: bf16, or int8 weight-only per output "
                        "channel (fewer bytes read per token; log-prob bounds in docs/eval.md); TP 1")
    p.set_defaults(func=_generate, copy_gbps=copy_gbps)
