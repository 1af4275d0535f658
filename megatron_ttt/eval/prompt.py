"""Which tokenizer a generation uses, and the prompt's ids."""

from pathlib import Path

import torch

from megatron_ttt.checkpoint.run_dir import TOKENIZER_FILE
from megatron_ttt.data import Manifest, Tokenizer
from megatron_ttt.errors import UserInputError


def _manifest_tokenizer(manifest_path: Path) -> Tokenizer:
    manifest = Manifest.load(manifest_path)
    if problem := manifest.tokenizer_problem():
        raise UserInputError(f"{manifest_path} {problem}; pass the right one with --tokenizer MODEL")
    return Tokenizer(manifest.settings.tokenizer.path)


def resolve_tokenizer(checkpoint: Path, tokenizer: str | None, data: str | None, model_vocab: int) -> Tokenizer:
    """--tokenizer, else DIR/tokenizer.model, else the tokenizer named by the --data manifest;
    its vocabulary must fit the model's (which may be padded beyond it)."""
    if tokenizer is not None:
        found = Tokenizer(tokenizer)
    elif (checkpoint / TOKENIZER_FILE).is_file():
        found = Tokenizer(checkpoint / TOKENIZER_FILE)
    elif data is not None:
        found = _manifest_tokenizer(Path(data))
    else:
        raise UserInputError(f"no tokenizer: {checkpoint} has no {TOKENIZER_FILE}; pass --tokenizer MODEL "
                             "or --data MANIFEST (the dataset the model was trained on)")
    if found.vocab_size > model_vocab:
        raise UserInputError(f"tokenizer {found.path} has {found.vocab_size} pieces, more than the vocabulary of "
                             f"{model_vocab} of the model in {checkpoint}: they do not belong together")
    return found


def prompt_ids(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """[1, T]: EOS (the document separator the model was trained with, when the tokenizer has
    one) then the prompt's pieces."""
    if not text.strip():
        raise UserInputError("the prompt is empty; pass some text with --prompt")
    ids = tokenizer.encode([text])[0]
    lead = [tokenizer.eos_id] if tokenizer.eos_id >= 0 else []
    return torch.tensor([lead + ids], dtype=torch.int64)


def document_prefix(tokenizer: Tokenizer) -> int:
    """The id a document starts with: EOS, the separator the model was trained with, else BOS."""
    prefix = tokenizer.eos_id if tokenizer.eos_id >= 0 else tokenizer.processor.bos_id()
    if prefix < 0:
        raise UserInputError(f"tokenizer {tokenizer.path} has neither an EOS nor a BOS piece to start a document with")
    return prefix
