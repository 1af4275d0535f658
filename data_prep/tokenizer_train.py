"""`mttt data train-tokenizer`: a sentencepiece model with the settings LLM pretraining expects."""

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
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
    text_fields: tuple[str, ...] = ()
    """Per input, the JSON field or Parquet/Arrow column holding the text (empty: the options' for all)."""


@dataclass(frozen=True)
class TrainedTokenizer:
    tokenizer: Tokenizer
    read: dict[str, SourceStats]
    """What was read of each input."""

    def summary(self) -> str:
        """A line per input: documents read and what was skipped."""
        return "\n".join(f"  {path}: {stats.documents:,} documents" + (
            f", {stats.skipped:,} malformed records skipped (the first: {stats.first_skipped})" if stats.skipped else "")
            for path, stats in self.read.items())


def _sentences(config: TokenizerTraining, options: SourceOptions, read: dict[str, SourceStats]) -> Iterator[str]:
    fields = config.text_fields or (options.json_field,) * len(config.inputs)
    for path, field in zip(config.inputs, fields):
        read[path] = SourceStats()
        for document in iter_documents(Path(path), replace(options, json_field=field), read[path]):
            yield from (line for line in document.split("\n") if line.strip())


def train_tokenizer(config: TokenizerTraining, options: SourceOptions = SourceOptions()) -> TrainedTokenizer:
    if config.model_type not in ("bpe", "unigram"):
        raise DataError(f"--model-type {config.model_type!r}: choose bpe or unigram")
    prefix = Path(config.output_prefix)
    if config.text_fields and len(config.text_fields) != len(config.inputs):
        raise DataError(f"{len(config.text_fields)} text fields for {len(config.inputs)} inputs: give one per input")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    read: dict[str, SourceStats] = {}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(config, options, read), model_prefix=str(prefix),
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
        {"training": asdict(config) | {"inputs": list(config.inputs)}, "tokenizer": asdict(tokenizer.info()),
         "read": {path: asdict(stats) for path, stats in read.items()}}, indent=1) + "\n")
    return TrainedTokenizer(tokenizer, read)
