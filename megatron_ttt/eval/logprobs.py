"""`mttt eval logprobs`: the token ids a user gives, checked against the model's vocabulary, and
their next-token log-probabilities written as float32."""

import argparse

import numpy as np
import torch

from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.loading import open_model_source
from megatron_ttt.models.scoring import token_logprobs


def check_token_ids(ids: np.ndarray, vocab_size: int, source: str) -> torch.Tensor:
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise UserInputError(f"{source}: expected integer token ids of shape [N, T], got {ids.dtype} {ids.shape}")
    if ids.shape[1] < 2:
        raise UserInputError(f"{source}: sequences of {ids.shape[1]} token(s) have no next token to score")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise UserInputError(f"{source}: token ids span [{ids.min()}, {ids.max()}], outside the model's "
                             f"vocabulary of {vocab_size}")
    return torch.from_numpy(ids.astype(np.int64))


def run_logprobs(args: argparse.Namespace) -> int:
    source = open_model_source(args.checkpoint)
    tokens = check_token_ids(np.load(args.input), source.config.vocab_size, args.input)
    with source.load(args.tensor_parallel, compiled=args.compile) as loaded:
        logp = token_logprobs(loaded.model, tokens, args.batch_size, show_progress=loaded.rank0,
                              fixed_shapes=args.compile)
    if loaded.rank0:
        np.save(args.output, logp.numpy().astype(np.float32))
        print(f"wrote {args.output}: float32 {tuple(logp.shape)}")
    return 0
