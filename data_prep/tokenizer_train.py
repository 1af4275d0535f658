"""`mttt data train-tokenizer`: a sentencepiece model with the settings LLM pretraining expects."""

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm

from megatron_ttt.data import DataError, Tokenizer
from megatron_ttt.atomic import write_atomic
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}


@dataclass(frozen=True)
class TokenizerTraining:
    inputs: tuple[str, ...]
    output_prefix: str
    """Writes PREFIX.model, PREFIX.vocab and PREFIX.json (these settings and the special ids)."""
    vocab_size: int = 32000
    model_type: str = "bpe"
    """"bpe" (fast to train) or "unigram"."""
    max_sentences: int = 2_000_000
    """Lines sampled (uniformly, reservoir) from a larger corpus; 0 uses every line."""
    character_coverage: float = 0.9995
    """Rarer characters are left to byte fallback."""
    max_sentence_length: int = 16384
    """Longer lines (in bytes) are left out of training, not truncated."""


def _sentences(inputs: tuple[str, ...], options: SourceOptions) -> Iterator[str]:
    for path in inputs:
        for document in iter_documents(Path(path), options, SourceStats()):
            yield from (line for line in document.split("\n") if line.strip())


def train_tokenizer(config: TokenizerTraining, options: SourceOptions = SourceOptions()) -> Tokenizer:
    if config.model_type not in ("bpe", "unigram"):
        raise DataError(f"--model-type {config.model_type!r}: choose bpe or unigram")
    prefix = Path(config.output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(config.inputs, options), model_prefix=str(prefix),
            vocab_size=config.vocab_size, model_type=config.model_type,
            character_coverage=config.character_coverage, max_sentence_length=config.max_sentence_length,
            input_sentence_size=config.max_sentences, shuffle_input_sentence=True,
            # What LLM tokenizers do: no unknown bytes, one token per digit, whitespace kept as is.
            byte_fallback=True, split_digits=True, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, normalization_rule_name="identity",
            **SPECIAL_IDS, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as exc:
        raise DataError(f"sentencepiece training failed for {prefix}: {exc}. A small corpus may not support "
                        "--vocab-size this large; lower it") from None
    tokenizer = Tokenizer(f"{prefix}.model")
    write_atomic(Path(f"{prefix}.json"), json.dumps(
        {"training": asdict(config) | {"inputs": list(config.inputs)}, "tokenizer": asdict(tokenizer.info())},
        indent=1) + "\n")
    return tokenizer
