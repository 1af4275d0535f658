"""The text column of Parquet files and Arrow IPC files (what `datasets.save_to_disk` writes).

pyarrow is an optional dependency (`pip install megatron-ttt[parquet]`), imported only when such an
input is read. Only the text column is read, one unit at a time (a Parquet row group, in batches of
`BATCH_ROWS` rows; an Arrow record batch, memory-mapped), so memory does not grow with the file.
The values come out as raw bytes: `sources.py` decodes them as it decodes every other input (bad
UTF-8 replaced or skipped, and counted).

What can be wrong, and what happens (under `skip_bad` in brackets): a missing column, or one that
does not hold strings, is an error naming the file and its columns [the same: no record is usable];
a null value is an error naming the file and row [skipped, counted]; an unreadable Parquet footer or
Arrow schema is an error naming the file [the file counted as truncated]; a corrupt Parquet row group
is an error naming it [its remaining rows skipped and counted; the next row groups are read]; a
corrupt or truncated Arrow record batch is an error naming it [the batches before it kept, the file
counted as truncated: a stream cannot be resumed past a damaged message].
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_ttt.data import DataError

if TYPE_CHECKING:
    import pyarrow

    from megatron_ttt.data_prep.sources import SourceStats

SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
"""The columnar formats, by file suffix (what `--format auto` picks)."""
BATCH_ROWS = 4096
"""Parquet rows decoded at once: bounds memory inside a row group (pyarrow writes up to 1Mi rows
in one by default), while amortizing the per-batch cost."""

Chunk = tuple[str, int, "pyarrow.Array"]
"""(where, first row, values): "row group 3" or "record batch 3", the file row of its first value,
and the text column as large_binary."""


def dataset_files(directory: Path) -> list[Path]:
    """The .arrow files of a `datasets.save_to_disk` directory, in the dataset's row order: the
    order of `_data_files` in its state.json (what `datasets.load_from_disk` concatenates)."""
    if (directory / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file())
        raise DataError(f"{directory} holds a DatasetDict (splits: {', '.join(splits)}); "
                        "give the directory of one split")
    state = directory / "state.json"
    if not state.is_file():
        raise DataError(f"{directory} is a directory without state.json; give its files, "
                        "or a directory written by datasets' save_to_disk")
    try:
        return [directory / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{state} has no readable _data_files list ({exc!r}); "
                        f"save the dataset again, or give its .arrow files") from None


def column_values(path: Path, fmt: str, column: str, skip_bad: float, stats: SourceStats) -> Iterator[bytes]:
    """The values of `column` in file order, as UTF-8 bytes; `fmt` is "parquet" or "arrow"."""
    pa = _pyarrow(path)
    chunks = _parquet_chunks if fmt == "parquet" else _arrow_chunks
    for where, first_row, values in chunks(pa, path, column, skip_bad, stats):
        for row, raw in enumerate(values.to_pylist(), first_row):
            if raw is not None:
                yield raw
            elif skip_bad:
                stats.skip(f"row {row} ({where}): column {column!r} is null")
            else:
                raise DataError(f"{path}: row {row} ({where}): column {column!r} is null; "
                                "fix the record or pass --skip-bad to skip and count it")


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401  (the submodules are attributes of pyarrow once imported)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"{path} is a Parquet or Arrow input, which needs pyarrow: "
                        "pip install megatron-ttt[parquet]") from None
    return pyarrow


def _errors(pa) -> tuple[type[Exception], ...]:
    """What pyarrow raises on damaged data (a failed page checksum is an OSError)."""
    return pa.ArrowException, OSError


def _reason(exc: Exception) -> str:
    """pyarrow's message on one line (some span several)."""
    return " ".join(str(exc).split())


def _parquet_chunks(pa, path: Path, column: str, skip_bad: float, stats: SourceStats) -> Iterator[Chunk]:
    try:
        # Pages written with checksums are checked: damage an uncompressed page would hide is caught.
        parquet = pa.parquet.ParquetFile(path, page_checksum_verification=True)
    except _errors(pa) as exc:
        _unreadable(path, "a readable Parquet file", exc, skip_bad, stats)
        return
    _check_column(pa, path, parquet.schema_arrow, column)
    groups, first_row = parquet.metadata.num_row_groups, 0
    for group in range(groups):
        rows, done = parquet.metadata.row_group(group).num_rows, 0
        try:
            # One thread: a shard worker is one process on one core; pyarrow's pool would oversubscribe.
            batches = parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=[column], use_threads=False)
            for batch in batches:
                yield f"row group {group}", first_row + done, _as_bytes(pa, batch.column(0))
                done += batch.num_rows
        except _errors(pa) as exc:
            if not skip_bad:
                raise DataError(f"{path}: row group {group} of {groups} (rows {first_row}-{first_row + rows - 1}) "
                                f"is corrupt ({_reason(exc)}); re-create the file, or pass --skip-bad to skip "
                                "the row group and count its rows as skipped") from None
            stats.skip(f"row group {group} is corrupt ({_reason(exc)})", rows - done)
        first_row += rows


def _arrow_chunks(pa, path: Path, column: str, skip_bad: float, stats: SourceStats) -> Iterator[Chunk]:
    with pa.memory_map(str(path)) as source:
        try:
            schema, batches = _ipc_batches(pa, source)
        except _errors(pa) as exc:
            _unreadable(path, "a readable Arrow IPC file", exc, skip_bad, stats)
            return
        index, first_row = _check_column(pa, path, schema, column), 0
        for number, values in enumerate(_batch_columns(pa, path, batches, index, skip_bad, stats)):
            yield f"record batch {number}", first_row, values
            first_row += len(values)


def _ipc_batches(pa, source) -> tuple[pyarrow.Schema, Iterator[pyarrow.RecordBatch]]:
    """The schema and record batches of the streaming format (what `datasets` writes) or of the
    file format. The file format's magic decides, rather than trying one reader after the other,
    so that a damaged stream reports its own error, not the file reader's."""
    is_file = source.read(6) == b"ARROW1"
    source.seek(0)
    if is_file:
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    reader = pa.ipc.open_stream(source)
    return reader.schema, iter(reader)


def _batch_columns(pa, path: Path, batches: Iterator[pyarrow.RecordBatch], index: int, skip_bad: float,
                   stats: SourceStats) -> Iterator[pyarrow.Array]:
    """Column `index` of each batch up to the first damaged one, which is an error or, under
    `skip_bad`, the end of the file (counted as truncated). Validated first: a damaged batch may
    point past its buffers."""
    number = 0
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            batch.validate()
            values = _as_bytes(pa, batch.column(index))
        except _errors(pa) as exc:
            if not skip_bad:
                raise DataError(f"{path}: record batch {number} is corrupt or truncated ({_reason(exc)}); "
                                "re-create the file, or pass --skip-bad to keep the batches before it") from None
            stats.truncated = True
            return
        yield values
        number += 1


def _as_bytes(pa, values: pyarrow.Array) -> pyarrow.Array:
    """The column as large_binary, its offsets checked (full validation of a string column would
    also reject bad UTF-8, which the caller replaces or skips instead)."""
    raw = values.cast(pa.large_binary())
    raw.validate(full=True)
    return raw


def _check_column(pa, path: Path, schema: pyarrow.Schema, column: str) -> int:
    if column not in schema.names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); "
                        "name the text column with --text-column")
    kind = schema.field(column).type
    if not any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string,
                                       pa.types.is_binary, pa.types.is_large_binary)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not strings; "
                        "name the text column with --text-column")
    return schema.get_field_index(column)


def _unreadable(path: Path, what: str, exc: Exception, skip_bad: float, stats: SourceStats) -> None:
    if not skip_bad:
        raise DataError(f"{path}: not {what} ({_reason(exc)}); re-create the file, or pass --skip-bad "
                        "to skip it (counted as truncated)") from None
    stats.truncated = True
