"""Random access to the samples of one shard: the tar file memory-mapped, samples at a fixed stride.

`mttt data shard` writes one tar member per sample, all the same size, so sample i's header sits
at i * stride. Each read checks that header (name, size, checksum), so a damaged or truncated
shard is reported with its path and the sample, never decoded into garbage tokens.
"""

from pathlib import Path

import numpy as np

from megatron_ttt.data.errors import DataError
from megatron_ttt.data.manifest import SAMPLE_FIELD
from megatron_ttt.data.tokenizer import file_sha256

BLOCK = 512
_SUFFIX = f".{SAMPLE_FIELD}".encode()


def member_stride(sample_bytes: int) -> int:
    return BLOCK + -(-sample_bytes // BLOCK) * BLOCK


class ShardReader:
    def __init__(self, path: Path, samples: int, sample_tokens: int, dtype: np.dtype, sha256: str | None = None):
        self.path, self.samples, self.sample_tokens, self.dtype = path, samples, sample_tokens, dtype
        self.sample_bytes = sample_tokens * dtype.itemsize
        self.stride = member_stride(self.sample_bytes)
        if not path.is_file():
            raise DataError(f"shard {path} is missing; re-run `mttt data shard` with the same arguments to rewrite it")
        if sha256 is not None and (digest := file_sha256(path)) != sha256:
            raise DataError(f"shard {path} has sha256 {digest[:12]}..., the manifest says {sha256[:12]}...; "
                            "the shard is damaged or from another run")
        needed = samples * self.stride
        size = path.stat().st_size
        if size < needed:
            raise DataError(f"shard {path} is truncated: {size} bytes, {samples} samples need {needed}")
        self._bytes = np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))

    def _check_header(self, index: int, header: np.ndarray) -> None:
        raw = header.tobytes()
        stored = raw[148:156].split(b"\0")[0].strip()
        actual = int(header[:148].sum()) + int(header[156:].sum()) + 8 * ord(" ")
        name = raw[:100].split(b"\0")[0]
        try:
            size = int(raw[124:136].split(b"\0")[0].strip() or b"0", 8)
            checksum_ok = int(stored, 8) == actual
        except ValueError:
            size, checksum_ok = -1, False
        if not checksum_ok or not name.endswith(_SUFFIX) or size != self.sample_bytes:
            raise DataError(f"shard {self.path}: sample {index} has a damaged tar header (name {name[:40]!r}, "
                            f"size {size}, checksum {'ok' if checksum_ok else 'wrong'}); re-create the shard")

    def read(self, index: int) -> np.ndarray:
        """Sample `index` of this shard: [sample_tokens] token ids."""
        if not 0 <= index < self.samples:
            raise IndexError(f"shard {self.path} has {self.samples} samples, asked for {index}")
        start = index * self.stride
        self._check_header(index, self._bytes[start:start + BLOCK])
        data = self._bytes[start + BLOCK:start + BLOCK + self.sample_bytes]
        return np.frombuffer(data, dtype=self.dtype)
