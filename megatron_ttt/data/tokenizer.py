"""A loaded sentencepiece model with the ids and the hash that manifests record."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from megatron_ttt.data.errors import DataError


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TokenizerInfo:
    """What a manifest records about the tokenizer its shards were made with."""

    path: str
    """The `.model` file, as given when the shards were written."""
    sha256: str
    """Hash of the `.model` file: a loader compares it before trusting token ids."""
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    """-1 where the model has no such piece (sentencepiece's convention)."""
    unk_id: int


class Tokenizer:
    """A sentencepiece model file, loaded."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise DataError(f"tokenizer model {self.path} does not exist; train one with `mttt data train-tokenizer`")
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise DataError(f"tokenizer model {self.path} is not a sentencepiece model: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    def info(self) -> TokenizerInfo:
        p = self.processor
        return TokenizerInfo(str(self.path), file_sha256(self.path), p.GetPieceSize(),
                             p.bos_id(), p.eos_id(), p.pad_id(), p.unk_id())

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS; one thread (parallelism is by process)."""
        return self.processor.Encode(texts, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self.processor.Decode(ids)
