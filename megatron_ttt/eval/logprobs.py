"""`mttt eval logprobs`: the token ids a user gives, checked against the model's vocabulary."""

import numpy as np
import torch

from megatron_ttt.errors import UserInputError


def check_token_ids(ids: np.ndarray, vocab_size: int, source: str) -> torch.Tensor:
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise UserInputError(f"{source}: expected integer token ids of shape [N, T], got {ids.dtype} {ids.shape}")
    if ids.shape[1] < 2:
        raise UserInputError(f"{source}: sequences of {ids.shape[1]} token(s) have no next token to score")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise UserInputError(f"{source}: token ids span [{ids.min()}, {ids.max()}], outside the model's "
                             f"vocabulary of {vocab_size}")
    return torch.from_numpy(ids.astype(np.int64))
