"""`mttt eval harness`: lm-evaluation-harness tasks on a checkpoint, offline; results written as
the harness writes them, and one line per task."""

import argparse
import json
import os
from pathlib import Path

from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.loading import open_model_source


def import_harness() -> None:
    """lm-eval, offline (tasks read local data; nothing is downloaded at run time)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval  # noqa: F401  whether it is installed; run_harness imports what it uses
    except ImportError:
        raise UserInputError("mttt eval harness needs lm-evaluation-harness: "
                             "pip install 'megatron-ttt[eval]'") from None


def task_manager(include_path: str | None, tasks: list[str]):
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise UserInputError(f"--include-path {include_path} is not a directory of task YAML files")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else " (local tasks: --include-path DIR)"
        raise UserInputError(f"unknown task(s) {', '.join(unknown)}: not in lm-eval's registry{where}")
    return manager


def summary(results: dict) -> list[str]:
    """One line per task: each metric with its standard error, and the documents scored."""
    lines = []
    for task, values in results["results"].items():
        metrics = []
        for key, value in values.items():
            name, _, _ = key.partition(",")
            if not isinstance(value, float) or name.endswith("_stderr"):
                continue
            stderr = values.get(key.replace(name, f"{name}_stderr", 1))
            metrics.append(f"{name} {value:.4f}" + (f" ± {stderr:.4f}" if isinstance(stderr, float) else ""))
        count = results.get("n-samples", {}).get(task, {}).get("effective")
        lines.append(f"{task}: " + ", ".join(metrics) + (f" ({count} documents)" if count is not None else ""))
    return lines


def run_harness(args: argparse.Namespace) -> int:
    import_harness()
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import make_table

    from megatron_ttt.eval.harness import HarnessModel

    tasks = [t for t in args.tasks.split(",") if t]
    manager = task_manager(args.include_path, tasks)
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    with source.load(args.tensor_parallel) as loaded:
        lm = HarnessModel(loaded.model, source.tokenizer, args.batch_size, args.max_length,
                          show_progress=loaded.rank0)
        tracker = EvaluationTracker(output_path=str(args.output))
        # model_args only name the results (the harness's folder for a local model is its path).
        results = simple_evaluate(model=lm, model_args={"pretrained": str(source.path)}, tasks=tasks,
                                  num_fewshot=args.num_fewshot, limit=args.limit,
                                  task_manager=manager, evaluation_tracker=tracker, log_samples=True,
                                  random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                  fewshot_random_seed=args.seed, metadata={"checkpoint": str(source.path)})
    if loaded.rank0:
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
        print(make_table(results))
        print("\n".join(summary(results)))
        print(f"results under {args.output}/ ({json.dumps(tasks)})")
    return 0
