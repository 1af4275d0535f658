"""`mttt generate`: load the model and a tokenizer, continue the prompt, print the text."""

import argparse
import sys

import torch

from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.generate import Generation, SamplingConfig, generate
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.prompt import prompt_ids
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.stored_weights import bytes_per_token, store_weights


def run_generate(args: argparse.Namespace) -> int:
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    tokenizer = source.tokenizer
    prompt = prompt_ids(tokenizer, args.prompt)
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else None
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed, eos, tokenizer.vocab_size)
    sampling.check()
    if args.compile:
        check_compilable(source.config, args.tensor_parallel)
    check_decode_options(args.weights, args.cuda_graph, args.compile, args.tensor_parallel)
    with source.load(args.tensor_parallel) as loaded:
        model = store_weights(loaded.model, args.weights)
        if args.cuda_graph:
            model, prompt = model.cuda(), prompt.cuda()
        out = generate(model, prompt, sampling, show_progress=loaded.rank0, compiled=args.compile,
                       cuda_graph=args.cuda_graph)
        read = bytes_per_token(model, out.cache_bytes)
    if loaded.rank0:
        ids = out.tokens[0].tolist()
        print(args.prompt + tokenizer.decode([i for i in ids if i != eos]))
        print(f"{prompt.shape[1]} prompt tokens: prefill {prompt.shape[1] / out.prefill_seconds:.0f} tok/s; "
              f"{len(ids)} new tokens: {speed(out, len(ids), args.compile)}; cache {out.cache_bytes / 2**10:.1f} KiB "
              "on this rank", file=sys.stderr)
        print(floor_line(out, len(ids), args.weights, read, args.copy_gbps()), file=sys.stderr)
    return 0


def floor_line(out: Generation, new_tokens: int, weights: str, read: int, gbps: float) -> str:
    """The bandwidth floor of a decode step: what it reads (weights as stored, the cache read and
    written) over this machine's copy bandwidth, measured now."""
    floor_ms = read / gbps / 1e6
    line = f"{weights} weights: {read / 1e6:.1f} MB read per token, floor {floor_ms:.2f} ms/token at {gbps:.1f} GB/s"
    if new_tokens < 3:
        return line
    return line + f" ({1e3 * out.decode_seconds / (new_tokens - 2) / floor_ms:.2f}x the floor)"


def check_decode_options(weights: str, cuda_graph: bool, compiled: bool, tensor_parallel: int) -> None:
    """--weights other than fp32 at TP 1; --cuda-graph with --compile on a CUDA machine."""
    if weights != "fp32" and tensor_parallel != 1:
        raise UserInputError(f"--weights {weights} decodes at --tensor-parallel 1, not {tensor_parallel}: leave out "
                             "one of them")
    if cuda_graph and not compiled:
        raise UserInputError("--cuda-graph captures the compiled decode step: add --compile")
    if cuda_graph and not torch.cuda.is_available():
        raise UserInputError("--cuda-graph needs a CUDA device and this machine has none: leave out --cuda-graph")


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
