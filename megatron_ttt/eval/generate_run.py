"""`mttt generate`: load the model and a tokenizer, continue the prompt, print the text."""

import argparse
import sys

from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.generate import Generation, SamplingConfig, generate
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.prompt import prompt_ids
from megatron_ttt.models.config import TTTModelConfig


def run_generate(args: argparse.Namespace) -> int:
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    tokenizer = source.tokenizer
    prompt = prompt_ids(tokenizer, args.prompt)
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else None
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed, eos, tokenizer.vocab_size)
    sampling.check()
    if args.compile:
        check_compilable(source.config, args.tensor_parallel)
    with source.load(args.tensor_parallel) as loaded:
        out = generate(loaded.model, prompt, sampling, show_progress=loaded.rank0, compiled=args.compile)
    if loaded.rank0:
        ids = out.tokens[0].tolist()
        print(args.prompt + tokenizer.decode([i for i in ids if i != eos]))
        print(f"{prompt.shape[1]} prompt tokens: prefill {prompt.shape[1] / out.prefill_seconds:.0f} tok/s; "
              f"{len(ids)} new tokens: {speed(out, len(ids), args.compile)}; cache {out.cache_bytes / 2**10:.1f} KiB "
              "on this rank", file=sys.stderr)
    return 0


def speed(out: Generation, new_tokens: int, compiled: bool) -> str:
    """Steady-state ms/token, the first decode step (which compiles, with --compile) apart."""
    first = f"first step {out.first_step_seconds:.2f} s" + (" (compiling)" if compiled else "")
    if new_tokens < 3:
        return first
    return f"{1e3 * out.decode_seconds / (new_tokens - 2):.2f} ms/token after the first step ({first})"


def check_compilable(config: TTTModelConfig, tensor_parallel: int) -> None:
    """--compile decodes TTT layers only, at TP 1 (models/compiled_decode.py): refused before
    any weight is loaded otherwise."""
    others = sorted(set(config.layer_pattern) - {"T"})
    if others:
        raise UserInputError(f"--compile decodes models of TTT layers only; this one has attention layers "
                             f"({config.layer_pattern!r}: {', '.join(others)}, whose cache grows or slides): leave out "
                             "--compile")
    if tensor_parallel != 1:
        raise UserInputError(f"--compile decodes at --tensor-parallel 1, not {tensor_parallel}: leave out one of them")
