"""`mttt generate`: load the model and a tokenizer, continue the prompt, print the text."""

import argparse
import sys

from megatron_ttt.eval.generate import SamplingConfig, generate
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.eval.prompt import prompt_ids


def run_generate(args: argparse.Namespace) -> int:
    source = open_model_source(args.checkpoint, with_tokenizer=True, tokenizer=args.tokenizer, data=args.data)
    tokenizer = source.tokenizer
    prompt = prompt_ids(tokenizer, args.prompt)
    eos = tokenizer.eos_id if tokenizer.eos_id >= 0 else None
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed, eos, tokenizer.vocab_size)
    sampling.check()
    with source.load(args.tensor_parallel) as loaded:
        out = generate(loaded.model, prompt, sampling, show_progress=loaded.rank0, compiled=args.compile)
    if loaded.rank0:
        ids = out.tokens[0].tolist()
        print(args.prompt + tokenizer.decode([i for i in ids if i != eos]))
        steps = max(len(ids) - 1, 1)
        print(f"{prompt.shape[1]} prompt tokens: prefill {prompt.shape[1] / out.prefill_seconds:.0f} tok/s; "
              f"{len(ids)} new tokens: {1e3 * out.decode_seconds / steps:.2f} ms/token; cache "
              f"{out.cache_bytes / 2**10:.1f} KiB on this rank", file=sys.stderr)
    return 0
