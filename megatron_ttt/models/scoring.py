"""Next-token log-probabilities of token sequences under a model: what evaluation reports and
what every conversion checks itself with; and the chunked prefill, which reads a sequence of any
length into an inference cache at the memory of one chunk."""

import torch
import torch.nn.functional as F
from tqdm import tqdm

from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.language_model import TTTLanguageModel

PREFILL_CHUNK = 2048
"""Tokens per forward when a sequence is read into an inference cache: the activations (and, when
scoring, the logits) stay those of one chunk, whatever the sequence's length."""


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """logits [..., V] and the ids they predict [...] -> log p(targets) [...], the log-softmax
    taken in `dtype`: float32 as training's loss, float64 where a few tokens' sum wants more."""
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


def next_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits [N, T, V] of tokens [N, T] -> float32 [N, T-1]: log p(tokens[:, t+1] | ..t)."""
    return target_logprobs(logits[:, :-1], tokens[:, 1:])


def bucket_length(length: int) -> int:
    """The length a model with compiled blocks scores `length` tokens at: the next power of two,
    so every length in (2^(k-1), 2^k] shares one graph and its compile."""
    return 1 << (length - 1).bit_length()


def padded(tokens: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """tokens [N, T] padded with id 0 to [rows, length]: a causal model's outputs at the real
    positions do not depend on what follows them, so compiled blocks see one shape per bucket."""
    return F.pad(tokens, (0, length - tokens.shape[1], 0, rows - tokens.shape[0]))


@torch.no_grad()
def token_logprobs(model: TTTLanguageModel, tokens: torch.Tensor, batch_size: int = 8,
                   show_progress: bool = False, fixed_shapes: bool = False) -> torch.Tensor:
    """tokens [N, T] -> float32 [N, T-1]: log p(tokens[:, t+1] | tokens[:, :t+1]). fixed_shapes:
    every batch padded to batch_size rows and bucket_length(T) tokens (compiled blocks)."""
    model.eval()
    out = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), unit="batch", disable=not show_progress):
        batch = tokens[start:start + batch_size]
        fed = padded(batch, batch_size, bucket_length(batch.shape[1])) if fixed_shapes else batch
        logits = model.gather_logits(model(fed))[:batch.shape[0], :batch.shape[1]]
        out.append(next_token_logprobs(logits, batch))
    return torch.cat(out)


@torch.no_grad()
def prefill(model: TTTLanguageModel, tokens: torch.Tensor, cache: InferenceCache,
            logprobs: bool = False) -> torch.Tensor:
    """Read tokens [B, T] into `cache` in chunks of PREFILL_CHUNK, each continuing the cache the one
    before left, so every token is conditioned on all before it. Returns the last position's logits
    (this rank's vocabulary slice, as `last_logits`: the next token's), or with `logprobs` the
    float32 [B, T-1] log p(tokens[:, t+1] | ..t); both equal one forward over the whole sequence."""
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"prefill reads token ids [B, T] with T >= 1, got shape {tuple(tokens.shape)}")
    starts = range(0, tokens.shape[1], PREFILL_CHUNK)
    if logprobs:
        return torch.cat([_chunk_logprobs(model, tokens, start, cache) for start in starts], dim=1)
    for start in starts:
        last = model.last_logits(tokens[:, start:start + PREFILL_CHUNK], cache)
    return last


def _chunk_logprobs(model: TTTLanguageModel, tokens: torch.Tensor, start: int, cache: InferenceCache) -> torch.Tensor:
    """The chunk at `start` read into the cache; the log-probabilities of the tokens after its
    positions (one fewer than it has at the sequence's end)."""
    chunk = tokens[:, start:start + PREFILL_CHUNK]
    targets = tokens[:, start + 1:start + 1 + chunk.shape[1]]
    return target_logprobs(model.gather_logits(model(chunk, cache=cache))[:, :targets.shape[1]], targets)
