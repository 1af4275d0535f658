"""Loss and perplexity over the validation split, by token position, at several context lengths.

The split is read as one token stream: its samples in manifest order, concatenated. Samples are
consecutive cuts of the tokenized documents (EOS between documents), so a context longer than
the stored sample length spans several samples of contiguous text. A context of C tokens takes
windows of C + 1 stream tokens (C inputs, C next-token targets), back to back; window w goes to
data-parallel rank w mod dp_size, and the ranks' sums are all-reduced. Under context
parallelism every rank of a CP group scores its slice of the same windows' positions.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from megatron_ttt.data.loader import ShardedSamples
from megatron_ttt.errors import UserInputError
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.scoring import target_logprobs
from megatron_ttt.parallel.context import all_slices, local_slice


@dataclass(frozen=True)
class PerplexityConfig:
    contexts: tuple[int, ...]
    """Context lengths (tokens scored per window); each a multiple of the model's mini-batch size."""
    batch_size: int = 8
    """Windows per forward on each data-parallel rank."""
    max_samples: int | None = None
    """Windows per context at most (None: as many as the split holds)."""


@dataclass
class ContextResult:
    context: int
    windows: int
    position_nll: np.ndarray
    """[C] float64: the summed negative log-likelihood at each position over all windows."""
    source: str = ""
    """The validation split scored: its dataset's name."""

    @property
    def tokens(self) -> int:
        return self.windows * self.context

    @property
    def loss(self) -> float:
        return float(self.position_nll.sum() / self.tokens)


class TokenStream:
    """The validation split as one stream of token ids (samples concatenated in manifest order)."""

    def __init__(self, samples: ShardedSamples):
        self.samples = samples
        self.sample_tokens = samples.manifest.settings.sample_tokens
        self.length = len(samples) * self.sample_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        first, last = start // self.sample_tokens, (start + length - 1) // self.sample_tokens
        joined = np.concatenate([self.samples[i] for i in range(first, last + 1)])
        offset = start - first * self.sample_tokens
        return joined[offset:offset + length].astype(np.int64)


def check_contexts(contexts: tuple[int, ...], mini_batch_size: int, stream_tokens: int, where: str,
                   context_parallel: int = 1) -> None:
    for context in contexts:
        if context < 1 or context % mini_batch_size:
            raise UserInputError(f"--context {context}: must be a positive multiple of the model's mini-batch "
                                 f"size {mini_batch_size} (the inner model steps once per whole mini-batch)")
        if context % context_parallel:
            raise UserInputError(f"--context {context} does not split over --context-parallel {context_parallel}")
        if context + 1 > stream_tokens:
            raise UserInputError(f"--context {context}: the validation split of {where} holds {stream_tokens} "
                                 f"tokens, fewer than one window of {context + 1}")


def _batch_nll(model: TTTLanguageModel, tokens: torch.Tensor, cp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """[B, C + 1] ids -> [C] float64: negative log-likelihoods summed over the batch per position
    (under CP each rank scores its slice of the positions; the slices are then joined)."""
    inputs, targets = (local_slice(t, 1, cp_group) for t in (tokens[:, :-1], tokens[:, 1:]))
    logp = target_logprobs(model.gather_logits(model(inputs)), targets)
    return all_slices(-logp.double().sum(0), 0, cp_group)


@torch.no_grad()
def evaluate_context(model: TTTLanguageModel, stream: TokenStream, context: int, config: PerplexityConfig,
                     dp_group: dist.ProcessGroup | None, show_progress: bool = False,
                     cp_group: dist.ProcessGroup | None = None) -> ContextResult:
    """The summed per-position loss of every window of this context, all-reduced over `dp_group`
    (the ranks of `cp_group`, if any, share each window)."""
    model.eval()
    windows = stream.length // (context + 1)
    if config.max_samples is not None:
        windows = min(windows, config.max_samples)
    dp_rank, dp_size = (dist.get_rank(dp_group), dist.get_world_size(dp_group)) if dp_group else (0, 1)
    mine = list(range(dp_rank, windows, dp_size))
    nll = torch.zeros(context, dtype=torch.float64)
    batches = range(0, len(mine), config.batch_size)
    for start in tqdm(batches, desc=f"context {context}", unit="batch", disable=not show_progress):
        ids = [stream.window(w * (context + 1), context + 1) for w in mine[start:start + config.batch_size]]
        nll += _batch_nll(model, torch.from_numpy(np.stack(ids)), cp_group)
    if dp_size > 1:
        dist.all_reduce(nll, group=dp_group)
    return ContextResult(context, windows, nll.numpy())
