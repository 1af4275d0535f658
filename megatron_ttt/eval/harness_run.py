"""`mttt eval harness`: lm-evaluation-harness tasks on a checkpoint, offline; results written as
the harness writes them, and one line per task. The example tasks shipped in harness_examples/
are always on the task path."""

import argparse
import contextlib
import json
import os
from pathlib import Path

import yaml

from megatron_ttt.errors import UserInputError

EXAMPLES = Path(__file__).with_name("harness_examples")
"""Plain lm-eval YAML and JSON Lines (its json loader), so they run offline from an installed package."""


def example_lines() -> list[str]:
    """`--list-examples`: each example's name and request type, then the folder to copy from."""
    lines = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        lines.append(f"{config['task']:<20} {config['output_type']}")
    return lines + [f"in {EXAMPLES} (always on the task path: run them by name, or copy the folder to start a task "
                    "of your own)"]


def import_harness() -> None:
    """lm-eval, offline (tasks read local data; nothing is downloaded at run time)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval  # noqa: F401  whether it is installed; run_harness imports what it uses
    except ImportError:
        raise UserInputError("mttt eval harness needs lm-evaluation-harness: "
                             "pip install 'megatron-ttt[eval]'") from None


def task_folders(include_path: str | None) -> list[Path]:
    """The examples, then --include-path: lm-eval lets a later folder's task replace an earlier
    one of the same name, so a user's own task wins."""
    if include_path is None:
        return [EXAMPLES]
    if not Path(include_path).is_dir():
        raise UserInputError(f"--include-path {include_path} is not a directory of task YAML files")
    return list(dict.fromkeys([EXAMPLES.resolve(), Path(include_path).resolve()]))


def task_manager(include_path: str | None, tasks: list[str]):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=task_folders(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"or in {include_path}" if include_path else "or in a folder of yours (--include-path DIR)"
        raise UserInputError(f"unknown task(s) {', '.join(unknown)}: not in lm-eval's registry, the examples "
                             f"(--list-examples) {where}")
    return manager


def load_tasks(manager, names: list[str]) -> list:
    """The tasks and groups named, each built in its YAML's folder. lm-eval's file loaders
    (`dataset_path: json` and the like) read a relative `data_files` path from the working
    directory; built there, a task finds its data next to its YAML, wherever the command runs,
    as lm-eval finds a YAML's `include` and `!function` files."""
    return [item for name in names for item in load_task(manager, name)]


def load_task(manager, name: str) -> list:
    entry = manager.task_index[name]
    if entry.kind.name == "TAG":  # no YAML of its own: each of its tasks from its own folder
        return load_tasks(manager, sorted(entry.tags))
    try:
        with contextlib.chdir(entry.yaml_path.parent if entry.yaml_path else Path.cwd()):
            loaded = manager.load(name)
    except FileNotFoundError as exc:
        raise UserInputError(f"task {name} ({entry.yaml_path}): {exc}; a relative data_files path is read from the "
                             "YAML's folder") from None
    return [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())


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
    from megatron_ttt.eval.loading import open_model_source

    tasks = [t for t in args.tasks.split(",") if t]
    manager = task_manager(args.include_path, tasks)
    built = load_tasks(manager, tasks)
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    with source.load(args.tensor_parallel) as loaded:
        lm = HarnessModel(loaded.model, source.tokenizer, args.batch_size, args.max_length,
                          show_progress=loaded.rank0)
        tracker = EvaluationTracker(output_path=str(args.output))
        # model_args only name the results (the harness's folder for a local model is its path).
        results = simple_evaluate(model=lm, model_args={"pretrained": str(source.path)}, tasks=built,
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
