"""Documents from input files: plain text or JSON Lines, each optionally `.gz` or `.zst`, and
the text column of Parquet and Arrow files (`columnar.py`).

Plain text holds one document per blank-line-separated block (`text_docs="blank-line"`, the
default) or one per line (`"line"`). JSON Lines hold one object per line with the text in one
field; Parquet and Arrow rows hold it in the column of that name. Everything that can be wrong with
a record is either an error naming the file and line (or row) or, under `skip_bad`, skipped and
counted in `SourceStats`.
"""

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from megatron_ttt.data import DataError
from megatron_ttt.data_prep.columnar import SUFFIXES as COLUMNAR_SUFFIXES
from megatron_ttt.data_prep.columnar import column_values, dataset_files

FORMATS = ("auto", "text", "jsonl", "parquet", "arrow")
TEXT_DOCS = ("blank-line", "line")
BAD_UTF8 = ("replace", "skip")
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass(frozen=True)
class SourceOptions:
    input_format: str = "auto"
    """"text", "jsonl", "parquet", "arrow", or "auto": Parquet for .parquet, Arrow for .arrow, JSON
    Lines for .jsonl/.json/.ndjson (before .gz/.zst), else text."""
    text_docs: str = "blank-line"
    """How plain text splits into documents: "blank-line" (blocks) or "line"."""
    json_field: str = "text"
    """The field of each JSON object, or the Parquet/Arrow column, that holds the document."""
    bad_utf8: str = "replace"
    """Invalid UTF-8 in a document: "replace" with U+FFFD or "skip" the document; counted either way."""
    skip_bad: float = 0.0
    """Skip and count malformed records (and corrupt Parquet row groups) and keep what precedes a
    truncated compressed stream or Arrow file, instead of stopping with an error, as long as the
    skipped records are at most this fraction of the file's (0: stop at the first; 1: no limit)."""


@dataclass
class SourceStats:
    empty: int = 0
    bad_utf8: int = 0
    skipped: int = 0
    truncated: bool = False
    records: int = 0
    """Records read but the skipped ones (empty documents and invalid UTF-8 included)."""
    documents: int = 0
    """Documents kept."""
    first_skipped: str = ""
    """Where the first skipped record was and what was wrong with it."""

    def skip(self, problem: str, count: int = 1) -> None:
        self.skipped += count
        self.first_skipped = self.first_skipped or problem


def input_format(path: Path, options: SourceOptions) -> str:
    if options.input_format != "auto":
        return options.input_format
    if path.suffix in COLUMNAR_SUFFIXES:
        return COLUMNAR_SUFFIXES[path.suffix]
    name = path.name.removesuffix(".gz").removesuffix(".zst")
    return "jsonl" if Path(name).suffix in _JSONL_SUFFIXES else "text"


class _Truncated(Exception):
    """A compressed stream ended inside a frame."""


def _zstd_lines(path: Path, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    # zstandard's stream_reader returns a silent short read on a truncated file, so frames are
    # decoded here and an unfinished one is reported.
    with open(path, "rb") as f:
        pending, decoder, in_frame = b"", zstandard.ZstdDecompressor().decompressobj(), False
        while chunk := f.read(chunk_bytes):
            while chunk:
                in_frame = True
                data = decoder.decompress(chunk)
                chunk = decoder.unused_data if decoder.eof else b""
                if decoder.eof:
                    decoder, in_frame = zstandard.ZstdDecompressor().decompressobj(), False
                *lines, pending = (pending + data).split(b"\n")
                yield from (line + b"\n" for line in lines)
        if in_frame:
            raise _Truncated("the last zstd frame is incomplete")
        if pending:
            yield pending


def _raw_lines(path: Path) -> Iterator[bytes]:
    if path.suffix == ".zst":
        yield from _zstd_lines(path)
        return
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        yield from f


def expand_inputs(paths: list[Path]) -> list[Path]:
    """The input files: each path as is, except a `datasets.save_to_disk` directory, which becomes
    its .arrow files (one task each)."""
    return [file for path in paths for file in (dataset_files(path) if path.is_dir() else [path])]


def iter_documents(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[str]:
    """The non-empty documents of one input file, in file order."""
    if not path.is_file():
        raise DataError(f"input {path} does not exist or is not a file")
    for text in _records(path, options, stats):
        stats.records += 1
        if text is None:
            continue
        if not text.strip():
            stats.empty += 1
            continue
        stats.documents += 1
        yield text
    _check_skipped(path, options, stats)


def _check_skipped(path: Path, options: SourceOptions, stats: SourceStats) -> None:
    """--skip-bad is for the odd damaged record: a file it empties (a wrong field or column, say)
    is an error, not a silently smaller corpus."""
    total = stats.records + stats.skipped
    if stats.skipped and stats.skipped > options.skip_bad * total:
        raise DataError(f"{path}: {stats.skipped:,} of {total:,} records skipped ({stats.skipped / total:.1%}), more "
                        f"than --skip-bad {options.skip_bad:g} allows; the first: {stats.first_skipped}. Fix the "
                        "input (--text-column names the field or column of each input), or raise the fraction")


def _records(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    fmt = input_format(path, options)
    if fmt in COLUMNAR_SUFFIXES.values():
        values = column_values(path, fmt, options.json_field, options.skip_bad, stats)
        return (_decode(raw, options, stats) for raw in values)
    records = _json_records if fmt == "jsonl" else _text_records
    return records(_lines(path, options, stats), path, options, stats)


def _lines(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[bytes]:
    line_no = 0
    try:
        for line in _raw_lines(path):
            line_no += 1
            yield line
    except (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError, _Truncated) as exc:
        if not options.skip_bad:
            raise DataError(f"{path}: compressed stream is truncated or corrupt after line {line_no} ({exc}); "
                            "re-create the file, or pass --skip-bad to keep the documents before the damage") from None
        stats.truncated = True


def _decode(raw: bytes, options: SourceOptions, stats: SourceStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.bad_utf8 += 1
        return None if options.bad_utf8 == "skip" else raw.decode("utf-8", errors="replace")


def _text_records(lines: Iterator[bytes], path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    if options.text_docs == "line":
        for line in lines:
            yield _decode(line.rstrip(b"\r\n"), options, stats)
        return
    block: list[bytes] = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            yield _decode(b"".join(block).rstrip(b"\r\n"), options, stats)
            block = []
    if block:
        yield _decode(b"".join(block).rstrip(b"\r\n"), options, stats)


def _json_records(lines: Iterator[bytes], path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[str | None]:
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        decoded = _decode(line, options, stats)
        if decoded is None:
            continue
        problem, text = _json_text(decoded, options.json_field)
        if problem is None:
            yield text
        elif options.skip_bad:
            stats.skip(f"line {line_no}: {problem}")
        else:
            raise DataError(f"{path}:{line_no}: {problem}; fix the record or pass --skip-bad to skip and count it")


def _json_text(line: str, field: str) -> tuple[str | None, str | None]:
    """(problem, text): exactly one is None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})", None
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object", None
    if field not in record:
        return f"no field {field!r} (fields: {', '.join(sorted(record)[:8])})", None
    if not isinstance(record[field], str):
        return f"field {field!r} is a {type(record[field]).__name__}, not a string", None
    return None, record[field]
