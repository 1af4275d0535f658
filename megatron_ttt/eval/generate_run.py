"""`mttt generate`: load the model and a tokenizer, continue the prompt, print the text."""

import argparse
import sys
from pathlib import Path

import torch

from megatron_ttt.checkpoint.model_dir import load_model, read_model_config
from megatron_ttt.checkpoint.run_dir import resolve_model_source
from megatron_ttt.eval.generate import SamplingConfig, generate
from megatron_ttt.eval.prompt import prompt_ids, resolve_tokenizer
from megatron_ttt.parallel.setup import ModelParallel, parallel_groups


def run_generate(args: argparse.Namespace) -> int:
    checkpoint = resolve_model_source(Path(args.checkpoint))
    cfg = read_model_config(checkpoint)
    tokenizer = resolve_tokenizer(checkpoint, args.tokenizer, args.data, cfg.vocab_size)
    prompt = prompt_ids(tokenizer, args.prompt)
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else None
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed, eos, tokenizer.vocab_size)
    sampling.check()
    with parallel_groups(ModelParallel(args.tensor_parallel)):
        model = load_model(checkpoint)
        rank0 = torch.distributed.get_rank() == 0
        out = generate(model, prompt, sampling, show_progress=rank0, compiled=args.compile)
    if rank0:
        ids = out.tokens[0].tolist()
        print(args.prompt + tokenizer.decode([i for i in ids if i != eos]))
        steps = max(len(ids) - 1, 1)
        print(f"{prompt.shape[1]} prompt tokens: prefill {prompt.shape[1] / out.prefill_seconds:.0f} tok/s; "
              f"{len(ids)} new tokens: {1e3 * out.decode_seconds / steps:.2f} ms/token; cache "
              f"{out.cache_bytes / 2**10:.1f} KiB on this rank", file=sys.stderr)
    return 0
