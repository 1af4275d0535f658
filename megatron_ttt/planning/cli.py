"""`mttt plan`: memory, FLOPs, communication and step time of a layout, or the best layouts."""

import argparse
import warnings
from dataclasses import fields

from megatron_ttt.models.config import BACKBONES, LAYER_TYPES
from megatron_ttt.planning.hardware import GPUS

SEARCHED = ("tp", "cp", "zero", "time_checkpoint_group", "micro_batch", "block_ckpt")

MODEL_OPTIONS = {"preset": "7b", "layer_type": None, "backbone": None, "vocab_size": 32000, "num_layers": 0,
                 "hidden_size": 0, "num_heads": 0, "ffn_hidden_size": 0, "layer_pattern": "", "attention_window": 0,
                 "num_kv_heads": 0, "lact_heads": 0, "lact_chunk_size": 0}
"""The options that shape the model, and their defaults (which --model leaves as they are)."""


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="per-GPU memory, FLOPs, communication and step time of a layout",
                       description="Without --tp/--cp/--zero/--time-checkpoint-group/--micro-batch/--block-ckpt, the "
                                   "ones left out are searched and the fastest layouts that fit are shown. See "
                                   "docs/planning.md.")
    p.add_argument("--preset", default=MODEL_OPTIONS["preset"],
                   help="tiny, 125m, 350m, 760m, 1.3b, 7b, a hybrid: 125m-hybrid, 7b-hybrid, or LaCT's: 125m-lact, "
                        "760m-lact (default 7b)")
    p.add_argument("--layer-type", default=MODEL_OPTIONS["layer_type"], choices=LAYER_TYPES,
                   help="default: lact for a LaCT preset, else linear")
    p.add_argument("--backbone", default=MODEL_OPTIONS["backbone"], choices=BACKBONES,
                   help="default: transformer for --layer-type lact, else mamba")
    p.add_argument("--vocab-size", type=int, default=MODEL_OPTIONS["vocab_size"])
    for flag, what in (("--num-layers", "layers"), ("--hidden-size", "model width"), ("--num-heads", "heads"),
                       ("--ffn-hidden-size", "SwiGLU MLP width")):
        p.add_argument(flag, type=int, default=MODEL_OPTIONS[flag[2:].replace("-", "_")],
                       help=f"{what} (default: the preset's), as model.{flag[2:].replace('-', '_')} in a config")
    p.add_argument("--layer-pattern", default=MODEL_OPTIONS["layer_pattern"], metavar="PATTERN",
                   help="a hybrid's mixer per layer: T TTT, * full attention, W sliding window (default: the preset's)")
    p.add_argument("--attention-window", type=int, default=MODEL_OPTIONS["attention_window"],
                   help="the W layers' window (default: the preset's)")
    p.add_argument("--num-kv-heads", type=int, default=MODEL_OPTIONS["num_kv_heads"],
                   help="the attention layers' key/value heads (default: the preset's)")
    for flag, what in (("--lact-heads", "LaCT layers' fast-weight heads"),
                       ("--lact-chunk-size", "LaCT layers' tokens per fast-weight update")):
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, type=int, default=MODEL_OPTIONS[key],
                       help=f"{what} (default: the model config's), as model.{key} in a config")
    p.add_argument("--model", metavar="DIR",
                   help="a model directory (e.g. one `mttt convert llama-to-mttt` wrote): its model_config.json in "
                        "place of --preset and the options above")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu", default="a100-80gb", choices=sorted(GPUS))
    p.add_argument("--tp", type=int)
    p.add_argument("--cp", type=int, help="context-parallel size: ranks splitting each sample's sequence")
    p.add_argument("--zero", type=int)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--global-batch-tokens", type=int, default=524288, help="tokens per step (default 0.5M)")
    p.add_argument("--time-checkpoint-group", type=int, metavar="G",
                   help="time-axis checkpoint group, mini-batches (LaCT: chunks; 0: off)")
    p.add_argument("--block-ckpt", choices=("on", "off"))
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--no-sequence-parallel", action="store_true")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"),
                   help="muon: one momentum for the hidden matrices instead of Adam's two moments")
    p.add_argument("--assume", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override an assumption (see docs/planning.md): " + ", ".join(_assumption_names()))
    p.add_argument("--top", type=int, default=5, help="layouts shown when searching")
    p.set_defaults(func=_plan)


def _assumption_names() -> list[str]:
    from megatron_ttt.planning.hardware import Assumptions

    return [f.name for f in fields(Assumptions)]


def _preset_model(args: argparse.Namespace):
    """The model the preset and the options describe, resolved as a pretraining config's model
    section is (config/model.py), with its problems named by flag."""
    with warnings.catch_warnings():  # megatron-core's import warns about optional CUDA extensions
        warnings.simplefilter("ignore")
        from megatron_ttt.models.presets import LACT_PRESETS, PRESETS, SETTINGS, settings_problems
    from megatron_ttt.config.model import lact_section_problems, resolve_model
    from megatron_ttt.config.sections import ModelSection
    from megatron_ttt.errors import UserInputError

    if args.preset not in PRESETS:
        raise UserInputError(f"--preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    if args.vocab_size < 1:
        raise UserInputError(f"--vocab-size {args.vocab_size} must be >= 1")
    layer_type = args.layer_type or ("lact" if args.preset in LACT_PRESETS else "linear")
    if args.preset in LACT_PRESETS and layer_type != "lact":
        raise UserInputError(f"--preset {args.preset} is a LaCT model: leave out --layer-type {layer_type}")
    settings = {key: getattr(args, key) for key in SETTINGS}
    if problems := settings_problems(args.preset, settings, key=_flag):
        raise UserInputError("; ".join(problems))
    section = ModelSection(preset=args.preset, layer_type=layer_type, backbone=args.backbone or "", **settings,
                           **{key: getattr(args, key) or getattr(ModelSection, key)
                              for key in ("lact_heads", "lact_chunk_size")})
    if problems := lact_section_problems(vars(section), key=_flag):
        raise UserInputError("; ".join(problems))
    return resolve_model(section, args.vocab_size)


def _flag(field: str) -> str:
    """The command-line flag of a model config field."""
    return "--" + field.replace("_", "-")


def _saved_model(args: argparse.Namespace):
    """The model config of the model directory --model names."""
    from pathlib import Path

    from megatron_ttt.checkpoint.run_dir import read_model_config
    from megatron_ttt.errors import UserInputError

    if given := [f"--{k.replace('_', '-')}" for k, default in MODEL_OPTIONS.items() if getattr(args, k) != default]:
        raise UserInputError(f"--model {args.model} gives the model: leave out {', '.join(given)}")
    return read_model_config(Path(args.model))


def _plan(args: argparse.Namespace) -> int:
    from megatron_ttt.planning.hardware import Assumptions, gpu
    from megatron_ttt.planning.layout import Layout
    from megatron_ttt.planning.report import report, table
    from megatron_ttt.planning.search import plan, search

    model = _preset_model(args) if args.model is None else _saved_model(args)
    device, assume = gpu(args.gpu), Assumptions().with_overrides(args.assume)
    given = {"tp": args.tp, "cp": args.cp, "zero": args.zero, "time_checkpoint_group": args.time_checkpoint_group,
             "micro_batch": args.micro_batch,
             "block_ckpt": None if args.block_ckpt is None else args.block_ckpt == "on"}
    base = Layout(args.nodes, args.gpus_per_node, seq_len=args.seq_len, global_batch_tokens=args.global_batch_tokens,
                  dtype=args.dtype, sequence_parallel=not args.no_sequence_parallel, optimizer=args.optimizer,
                  **{k: v for k, v in given.items() if v is not None})
    open_options = {k for k, v in given.items() if v is None}
    if open_options:
        plans = search(model, base, open_options, device, assume, keep=args.top)
        print(table(model, plans, device))
        print()
        best = plans[0]
    else:
        best = plan(model, base, device, assume)
    print(report(model, best, device, assume))
    return 0
