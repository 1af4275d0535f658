"""Random access to the samples of one shard: the tar file read at a fixed stride.

`mttt data shard` writes one tar member per sample, all the same size, so sample i's header sits
at i * stride. Each read checks that header (name, size, checksum), so a damaged or truncated
shard is reported, never decoded into garbage tokens. The errors say what is wrong; the loader,
which knows the manifest, adds the shard, the sample and what to do.

Each sample is one positioned read (pread), not a view of a memory map: a shard truncated while
a run has it open then reads short, which is an error naming it, where a mapped page past the
new end would kill the process with SIGBUS.
"""

import os
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
            raise DataError("the shard file is missing")
        if sha256 is not None and (digest := file_sha256(path)) != sha256:
            raise DataError(f"the shard has sha256 {digest[:12]}..., the manifest says {sha256[:12]}... (its bytes "
                            "are damaged, or it is another dataset's shard)")
        needed = samples * self.stride
        size = path.stat().st_size
        if size < needed:
            raise DataError(f"the shard is truncated: {size:,} bytes, its {samples} samples need {needed:,}")
        self._fd: int | None = None
        self._open()

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"the shard cannot be read: {exc.strerror or exc}") from None
        return self._fd

    def __getstate__(self) -> dict:
        """Pickled (into a data-loader worker) without its file descriptor, which it reopens."""
        return self.__dict__ | {"_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _check_header(self, header: np.ndarray) -> None:
        raw = header.tobytes()
        stored = raw[148:156].split(b"\0")[0].strip()
        actual = int(header[:148].sum()) + int(header[156:].sum()) + 8 * ord(" ")
        name = raw[:100].split(b"\0")[0]
        try:
            size = int(raw[124:136].split(b"\0")[0].strip() or b"0", 8)
            checksum_ok = int(stored, 8) == actual
        except ValueError:
            size, checksum_ok = -1, False
        if not checksum_ok:
            raise DataError("its tar header is damaged (the header checksum is wrong)")
        if not name.endswith(_SUFFIX):
            raise DataError(f"its tar member is {name[:40].decode(errors='replace')!r}, not a .{SAMPLE_FIELD} sample")
        if size != self.sample_bytes:
            raise DataError(f"it holds {size} bytes ({size / self.dtype.itemsize:g} tokens), where a sample of this "
                            f"dataset holds {self.sample_bytes} ({self.sample_tokens} tokens)")

    def read(self, index: int) -> np.ndarray:
        """Sample `index` of this shard: [sample_tokens] token ids."""
        if not 0 <= index < self.samples:
            raise IndexError(f"shard {self.path} has {self.samples} samples, asked for {index}")
        start = index * self.stride
        member = os.pread(self._open(), BLOCK + self.sample_bytes, start)
        if len(member) < BLOCK + self.sample_bytes:
            raise DataError(f"the shard was truncated while open: {start + len(member):,} bytes, sample {index} "
                            f"ends at {start + BLOCK + self.sample_bytes:,}")
        bytes_ = np.frombuffer(member, dtype=np.uint8)
        self._check_header(bytes_[:BLOCK])
        return bytes_[BLOCK:].view(self.dtype)
