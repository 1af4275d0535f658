"""Synthetic long-context retrieval, built from the model's own tokenizer: nothing is downloaded.

Two tasks, each a prompt of exactly `length` tokens with a needle at a relative `depth` of its
filler, between the sentences nearest it (0: at the start, 1: just before the question); the
filler's first sentence is cut at its start so that it holds exactly the tokens that remain:
- passkey (Mohtashami & Jaggi 2023): the filler repeats "The grass is green. The sky is blue.
  ..."; the needle is "The pass key is 68048. Remember it. 68048 is the pass key."; the prompt
  ends "What is the pass key? The pass key is".
- needle (needle-in-a-haystack, as RULER's single needle): the filler is the bundled corpus's
  sentences from a seeded one on; the needle is "One of the special magic numbers for <key> is:
  <value>."; the prompt ends "What is the special magic number for <key>? The special magic
  number for <key> is:".
The model reads the prompt once (prefill, in chunks that carry the inference cache), then the
answer's tokens one at a time: the answer's log-probability, and an exact match when greedy
decoding would produce the answer (the argmax at each of its tokens is that token). Filler,
keys and values come from `seed`, the length, the depth and the trial, so a report is
reproducible.
"""

import random
from dataclasses import dataclass

import torch

from megatron_ttt.data import Tokenizer
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.prompt import document_prefix
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.scoring import prefill, target_logprobs

TASKS = ("passkey", "needle")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEYS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "krypton",
        "lagoon", "meadow", "nectar", "orchid", "pepper", "quartz", "raven", "saffron", "tundra")


@dataclass(frozen=True)
class Trial:
    task: str
    length: int
    depth: float
    prompt: list[int]
    """Exactly `length` token ids: the document separator, filler with the needle, the question."""
    answer: list[int]
    needle_at: int
    """Token position where the needle starts."""


@dataclass(frozen=True)
class Outcome:
    exact: bool
    logprob: float
    """log p(answer | prompt), summed over the answer's tokens."""


def needle_texts(task: str, rng: random.Random) -> tuple[str, str, str]:
    """(needle sentence, question, answer) of one trial."""
    if task == "passkey":
        key = str(rng.randrange(10_000, 100_000))
        return (f"The pass key is {key}. Remember it. {key} is the pass key. ",
                "What is the pass key? The pass key is", f" {key}")
    key, value = rng.choice(KEYS), str(rng.randrange(1_000_000, 10_000_000))
    return (f"One of the special magic numbers for {key} is: {value}. ",
            f"What is the special magic number for {key}? The special magic number for {key} is:", f" {value}")


def filler_sentences(task: str, corpus: str) -> list[str]:
    """The sentences a task fills with, in order; a trial starts at a seeded one and wraps around."""
    if task == "passkey":
        return [s + ". " for s in PASSKEY_FILLER.split(". ") if s.strip()]
    return [s.strip() + ". " for s in corpus.replace("\n", " ").split(". ") if s.strip()]


class TrialBuilder:
    """Prompts of an exact token length; each task's sentences encoded once and reused."""

    def __init__(self, tokenizer: Tokenizer, corpus: str, seed: int):
        self.tokenizer, self.corpus, self.seed = tokenizer, corpus, seed
        self.prefix = [document_prefix(tokenizer)]
        self._sentences: dict[str, list[list[int]]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode([text])[0]

    def sentences(self, task: str) -> list[list[int]]:
        if task not in self._sentences:
            self._sentences[task] = self.tokenizer.encode(filler_sentences(task, self.corpus))
        return self._sentences[task]

    def trial(self, task: str, length: int, depth: float, index: int) -> Trial:
        rng = random.Random(f"{self.seed}/{task}/{length}/{depth}/{index}")
        needle, question, answer = (self.encode(t) for t in needle_texts(task, rng))
        budget = length - len(self.prefix) - len(needle) - len(question)
        if budget < 1:
            raise UserInputError(f"--lengths {length}: a {task} prompt needs more than {length - budget} tokens "
                                 "(the needle and the question); use longer lengths")
        filler, boundaries = self.filler(task, rng, budget)
        at = min(boundaries, key=lambda b: abs(b - depth * budget))  # between sentences, nearest the depth
        prompt = self.prefix + filler[:at] + needle + filler[at:] + question
        return Trial(task, length, depth, prompt, answer, len(self.prefix) + at)

    def filler(self, task: str, rng: random.Random, budget: int) -> tuple[list[int], list[int]]:
        """Exactly `budget` filler ids, whole sentences from a seeded one on but the first, which is
        cut at its start (so the text before the needle and the question ends a sentence), and the
        offsets between sentences (0 and `budget` included)."""
        sentences = self.sentences(task)
        i, ids, boundaries = rng.randrange(len(sentences)), [], []
        while len(ids) < budget:
            ids += sentences[i % len(sentences)]
            boundaries.append(len(ids))
            i += 1
        cut = len(ids) - budget
        return ids[cut:], [0] + [b - cut for b in boundaries if b > cut]


@torch.no_grad()
def score(model: TTTLanguageModel, trial: Trial, vocab_limit: int) -> Outcome:
    """Prefill the prompt in cache-carrying chunks, then teacher-force the answer (its log-probability
    in float64); greedy decoding draws only ids below `vocab_limit` (the tokenizer's; the model's
    vocabulary may be padded)."""
    model.eval()
    cache = InferenceCache.empty(len(model.blocks))
    logits = prefill(model, torch.tensor([trial.prompt], dtype=torch.int64), cache)
    exact, logprob = True, 0.0
    for i, token in enumerate(trial.answer):
        full = model.gather_logits(logits[:, None]).float()[0, 0]
        logprob += float(target_logprobs(full, torch.tensor(token), torch.float64))
        exact &= int(full[:vocab_limit].argmax()) == token
        if i + 1 < len(trial.answer):
            logits = model.last_logits(torch.tensor([[token]]), cache)
    return Outcome(exact, logprob)


def corpus_text() -> str:
    """The bundled corpus's text (the Python language reference every Python ships): the needle
    task's filler."""
    from pydoc_data.topics import topics

    return "\n".join(topics[name] for name in sorted(topics))
