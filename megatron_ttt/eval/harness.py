"""An lm-evaluation-harness model over our checkpoints: log-likelihoods of continuations, rolling
log-likelihoods of whole documents, and generation until a stop string.

Every TP rank runs every request (the harness sees one process: rank 0 of 1), so tensor
parallelism is invisible to it. Documents are scored in chunks that carry the inference cache
(each layer's TTT state, convolution tails and attention keys), so a rolling log-likelihood
conditions every token on the whole document before it, at the memory of one chunk, where
attention models must cut the document into windows.
"""

import torch
from lm_eval.api.model import LM
from tqdm import tqdm

from megatron_ttt.data import Tokenizer
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.generate import SamplingConfig, generate
from megatron_ttt.eval.prompt import document_prefix
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.scoring import next_token_logprobs, prefill

MAX_GEN_TOKS = 256
"""New tokens at most when a task does not say (the harness's default)."""
ANCHOR_TOKENS = 8
"""Prompt pieces decoded before the new ones, so the new text keeps its leading space."""


class HarnessModel(LM):
    def __init__(self, model: TTTLanguageModel, tokenizer: Tokenizer, batch_size: int = 8,
                 max_length: int | None = None, show_progress: bool = True):
        """max_length: tokens a loglikelihood request keeps at most (its context cut from the left);
        None keeps them all (a TTT model has no context limit)."""
        super().__init__()
        if batch_size < 1 or (max_length is not None and max_length < 1):
            raise UserInputError(f"--batch-size {batch_size} and --max-length {max_length} must be at least 1")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length, self.show_progress = max_length, show_progress
        self.prefix_id = document_prefix(tokenizer)
        """Starts every sequence: the document separator the model was trained with."""

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Ids of the prefix and context, and of the continuation, split where the whole text's
        pieces split (a word's leading space belongs to the continuation)."""
        spaces = len(context) - len(context.rstrip())
        context, continuation = context[:len(context) - spaces], context[len(context) - spaces:] + continuation
        whole = self.tokenizer.encode([context + continuation])[0]
        head = self.tokenizer.encode([context])[0] if context else []
        return [self.prefix_id] + whole[:len(head)], whole[len(head):]

    def _progress(self, items, what: str):
        return tqdm(items, desc=what, unit="req", disable=not self.show_progress)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        for start in self._progress(range(0, len(order), self.batch_size), "loglikelihood"):
            batch = order[start:start + self.batch_size]
            for i, result in zip(batch, self._score_batch([pairs[i] for i in batch])):
                results[i] = result
        return results

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Right-padded to the longest: a causal model's scores of a sequence ignore what follows it."""
        if any(not continuation for _, continuation in pairs):
            raise UserInputError("a loglikelihood request has an empty continuation: nothing to score")
        rows = [self._truncate(context, continuation) for context, continuation in pairs]
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [self.prefix_id] * (width - len(r)) for r in rows], dtype=torch.int64)
        logits = self.model.gather_logits(self.model(tokens)).float()
        vocab = self.tokenizer.vocab_size  # greedy decoding draws only the tokenizer's ids
        logp, greedy = next_token_logprobs(logits, tokens), logits[:, :-1, :vocab].argmax(-1) == tokens[:, 1:]
        out = []
        for row, (r, (_, continuation)) in enumerate(zip(rows, pairs)):
            span = slice(len(r) - 1 - len(continuation), len(r) - 1)
            out.append((float(logp[row, span].double().sum()), bool(greedy[row, span].all())))
        return out

    def _truncate(self, context: list[int], continuation: list[int]) -> list[int]:
        """Context then continuation, the context cut from the left to max_length tokens in all."""
        if self.max_length is None:
            return context + continuation
        if len(continuation) > self.max_length:
            raise UserInputError(f"a loglikelihood continuation of {len(continuation)} tokens is longer than "
                                 f"--max-length {self.max_length}; raise it")
        return context[max(0, len(context) + len(continuation) - self.max_length - 1):] + continuation

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        return [self.document_logprob(self.tokenizer.encode([r.args[0]])[0])
                for r in self._progress(requests, "loglikelihood_rolling")]

    def document_logprob(self, ids: list[int]) -> float:
        """log p(ids | prefix), every token conditioned on all before it: the chunked prefill,
        which carries one inference cache from chunk to chunk."""
        tokens = torch.tensor([[self.prefix_id] + ids], dtype=torch.int64)
        cache = InferenceCache.empty(len(self.model.blocks))
        return float(prefill(self.model, tokens, cache, logprobs=True).double().sum())

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        return [self._generate(*r.args) for r in self._progress(requests, "generate_until")]

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        eos = self.tokenizer.eos_id if self.tokenizer.eos_id >= 0 else None
        sampling = SamplingConfig(int(kwargs.pop("max_gen_toks", MAX_GEN_TOKS)), temperature,
                                  float(kwargs.pop("top_p", 1.0)), int(kwargs.pop("seed", 0)), eos,
                                  self.tokenizer.vocab_size)
        prompt_ids = [self.prefix_id] + (self.tokenizer.encode([context])[0] if context else [])
        anchor = [i for i in prompt_ids if i != self.tokenizer.eos_id][-ANCHOR_TOKENS:]

        def stopped(tokens: torch.Tensor) -> torch.Tensor:
            return torch.tensor([any(s in self._continuation(anchor, row) for s in until) for row in tokens.tolist()])

        out = generate(self.model, torch.tensor([prompt_ids]), sampling, stop=stopped if until else None)
        text = self._continuation(anchor, out.tokens[0].tolist())
        for s in until:
            text = text.split(s)[0]
        return text

    def _continuation(self, anchor: list[int], new_ids: list[int]) -> str:
        """The text new ids add after the prompt's last pieces (`anchor`), with the space a word's
        first piece carries: decoded alone, a sentencepiece text drops its leading space."""
        new_ids = [i for i in new_ids if i != self.tokenizer.eos_id]
        return self.tokenizer.decode(anchor + new_ids)[len(self.tokenizer.decode(anchor)):]
