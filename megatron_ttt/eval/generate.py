"""Text generation with a constant-memory cache: the prompt in one dual-form forward (prefill),
then one decode step per new token carrying each layer's TTT and convolution states."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from megatron_ttt.errors import UserInputError
from megatron_ttt.models.compiled_decode import CompiledDecoder
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.language_model import TTTLanguageModel


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    """Tokens to generate at most (fewer if every sequence has produced `eos_id`)."""
    temperature: float = 0.0
    """0: greedy (argmax); otherwise logits are divided by it before top-p sampling."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest set of most likely tokens whose mass reaches top_p."""
    seed: int = 0
    """Seeds the sampling generator (every TP rank draws the same tokens from the same logits)."""
    eos_id: int | None = None
    """Stop once every sequence has produced it (None: never stop early)."""
    vocab_limit: int | None = None
    """Sample only ids below this (the tokenizer's vocabulary; the model's may be padded beyond it)."""

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UserInputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserInputError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserInputError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    tokens: torch.Tensor
    """[B, N] the generated ids."""
    logits: torch.Tensor | None
    """[B, N, V] the logits each generated token was drawn from (when asked for)."""
    prefill_seconds: float
    first_step_seconds: float
    """Wall time of the first decode step (where a compiled decoder compiles); 0 if none ran."""
    decode_seconds: float
    """Wall time of the N - 2 decode steps after the first: the steady state."""
    cache_bytes: int
    """Size of the inference cache at the end (the same at any length)."""


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> ids [B]: greedy at temperature 0, else top-p over softmax(logits / T)."""
    if sampling.vocab_limit is not None:
        logits = logits[:, :sampling.vocab_limit]
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep a token while the mass before it is below top_p: the first token is always kept.
    kept = sorted_probs * ((sorted_probs.cumsum(-1) - sorted_probs) < sampling.top_p)
    choice = torch.multinomial(kept, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


@torch.no_grad()
def generate(model: TTTLanguageModel, prompt: torch.Tensor, sampling: SamplingConfig, keep_logits: bool = False,
             show_progress: bool = False, stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
             compiled: bool = False, cuda_graph: bool = False) -> Generation:
    """prompt [B, T] ids (T >= 1) -> the generated continuation. `stop`: the tokens generated so
    far [B, n] -> [B] bool, the sequences that are done (a stop string appeared), checked after
    every token like `eos_id`. `compiled`: decode through one compiled graph of the model
    (models/compiled_decode.py; TTT layers at TP 1), compiled on the first token; `cuda_graph`: that
    graph also captured as a CUDA graph (the model and prompt on a CUDA device). Sampling runs on
    the CPU."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise UserInputError(f"the prompt must hold at least one token, got ids of shape {tuple(prompt.shape)}")
    sampling.check()
    model.eval()
    generator = torch.Generator().manual_seed(sampling.seed)
    cache = InferenceCache.empty(len(model.blocks))
    start = time.perf_counter()
    logits = model.gather_logits(model.last_logits(prompt, cache)).float().cpu()
    prefill = time.perf_counter() - start
    next_logits = CompiledDecoder(model, cache, cuda_graph=cuda_graph) if compiled or cuda_graph else \
        lambda tokens: model.last_logits(tokens, cache)
    tokens, kept, finished = [], [], torch.zeros(prompt.shape[0], dtype=torch.bool)
    first, start = 0.0, time.perf_counter()
    for step in tqdm(range(sampling.max_new_tokens), unit="tok", disable=not show_progress):
        token = sample_next(logits, sampling, generator)
        tokens.append(token)
        if keep_logits:
            kept.append(logits)
        finished |= token == sampling.eos_id
        if stop is not None:
            finished |= stop(torch.stack(tokens, dim=1))
        if step == sampling.max_new_tokens - 1 or bool(finished.all()):
            break
        logits = model.gather_logits(next_logits(token[:, None].to(prompt.device))).float().cpu()
        if step == 0:
            first, start = time.perf_counter() - start, time.perf_counter()
    decode = time.perf_counter() - start if first else 0.0
    return Generation(torch.stack(tokens, dim=1), torch.stack(kept, dim=1) if keep_logits else None, prefill, first,
                      decode, (next_logits.cache() if compiled or cuda_graph else cache).nbytes())
