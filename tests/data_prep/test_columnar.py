"""Parquet and Arrow inputs: the tokens of the same text as JSON Lines, and every kind of damage."""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from megatron_ttt.cli import main
from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.manifest import SPLITS
from megatron_ttt.data_prep.merge import merge_manifests, slice_manifests
from tests.data_prep.corpora import documents, read, shard, write_jsonl

ROWS = 16
"""Rows per Parquet row group and per Arrow record batch: several of each in every file."""


def write_parquet(path: Path, docs: list, column: str = "text", kind: pa.DataType = pa.string()) -> Path:
    table = pa.table({column: pa.array(docs, kind), "id": list(range(len(docs)))})
    pq.write_table(table, path, row_group_size=ROWS, write_page_checksum=True)
    return path


def write_arrow(path: Path, docs: list, column: str = "text", stream: bool = True,
                metadata: dict | None = None) -> Path:
    table = pa.table({column: docs, "id": list(range(len(docs)))}).replace_schema_metadata(metadata)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
        for batch in table.to_batches(ROWS):
            writer.write_batch(batch)
    return path


def save_to_disk(directory: Path, parts: list[list[str]], column: str = "text") -> Path:
    """What `datasets.Dataset.save_to_disk` writes (datasets 5.0, src/datasets/arrow_dataset.py):
    contiguous shards `data-XXXXX-of-NNNNN.arrow` in the Arrow IPC streaming format (its
    ArrowWriter), their schema carrying a "huggingface" metadata key, `state.json` listing the shards
    in `_data_files`, and `dataset_info.json`."""
    directory.mkdir(parents=True)
    features = {column: {"dtype": "string", "_type": "Value"}, "id": {"dtype": "int64", "_type": "Value"}}
    names = [f"data-{i:05d}-of-{len(parts):05d}.arrow" for i in range(len(parts))]
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    for name, docs in zip(names, parts):
        write_arrow(directory / name, docs, column, metadata=metadata)
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "0123456789abcdef",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    (directory / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    return directory


def assert_same_shards(got: Manifest, expected: Manifest) -> None:
    for split in SPLITS:
        assert [(e.path, e.sha256, e.documents) for e in got.shards[split]] == \
            [(e.path, e.sha256, e.documents) for e in expected.shards[split]]
    assert got.totals() == expected.totals() and got.totals()["train"]["samples"] > 0
    assert [(t.documents, t.tokens, t.dropped_tokens) for t in got.tasks] == \
        [(t.documents, t.tokens, t.dropped_tokens) for t in expected.tasks]


@pytest.fixture
def parts() -> list[list[str]]:
    """Two inputs' documents: 60 each, some spanning several samples."""
    return [documents(60, seed=seed, long_every=17) for seed in (1, 2)]


def test_parquet_shards_hold_the_tokens_of_the_same_jsonl(tmp_path, tokenizer, parts):
    jsonl = [write_jsonl(tmp_path / f"part-{i}.jsonl", docs) for i, docs in enumerate(parts)]
    parquet = [write_parquet(tmp_path / f"part-{i}.parquet", docs) for i, docs in enumerate(parts)]
    assert pq.ParquetFile(parquet[0]).metadata.num_row_groups == 4
    expected = shard(tmp_path, "jsonl", tokenizer, jsonl, val_fraction=0.2)
    assert_same_shards(shard(tmp_path, "parquet", tokenizer, parquet, val_fraction=0.2), expected)


def test_save_to_disk_directory_is_one_task_per_arrow_file_across_slices(tmp_path, tokenizer, parts):
    jsonl = [write_jsonl(tmp_path / f"part-{i}.jsonl", docs) for i, docs in enumerate(parts)]
    expected = shard(tmp_path, "jsonl", tokenizer, jsonl)
    dataset = save_to_disk(tmp_path / "dataset", parts, column="content")
    out = tmp_path / "arrow"
    for index in range(2):
        assert main(["data", "shard", "--tokenizer", str(tokenizer.path), "--output", str(out), "--seq-len", "64",
                     "--text-column", "content", "--quiet", "--task-index", str(index), "--num-tasks", "2",
                     "--input", str(dataset)]) == 0
    merged = merge_manifests(slice_manifests(out), out / "manifest.json")
    assert [Path(t.input).name for t in merged.tasks] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert_same_shards(merged, expected)


@pytest.mark.parametrize("write, options", [
    (lambda path, docs: write_parquet(path.with_suffix(".parquet"), docs), {}),
    (lambda path, docs: write_arrow(path.with_suffix(".arrow"), docs), {}),
    (lambda path, docs: write_arrow(path.with_suffix(".arrow"), docs, stream=False), {}),
    (lambda path, docs: write_parquet(path.with_suffix(".bin"), docs), {"input_format": "parquet"}),
    (lambda path, docs: write_arrow(path.with_suffix(".bin"), docs), {"input_format": "arrow"}),
], ids=["parquet", "arrow-stream", "arrow-file", "parquet-by-option", "arrow-by-option"])
def test_columnar_files_read_in_row_order(tmp_path, write, options):
    docs = documents(50, seed=3)
    assert read(write(tmp_path / "a", docs), **options)[0] == docs


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_null_values_are_bad_records_and_binary_text_is_decoded(tmp_path, suffix):
    docs = [b"one", None, b"caf\xe9"] + [b"more"] * ROWS
    path = tmp_path / f"a{suffix}"
    if suffix == ".parquet":
        write_parquet(path, docs, kind=pa.binary())
    else:
        write_arrow(path, pa.array(docs, pa.binary()))
    unit = "row group 0" if suffix == ".parquet" else "record batch 0"
    with pytest.raises(DataError, match=rf"a\{suffix}: row 1 \({unit}\): column 'text' is null"):
        read(path)
    kept, stats = read(path, skip_bad=True)
    assert kept == ["one", "caf\ufffd"] + ["more"] * ROWS and stats.skipped == 1 and stats.bad_utf8 == 1


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
@pytest.mark.parametrize("column, problem", [
    ("body", r"no column 'body' \(columns: text, id\); name the text column with --text-column"),
    ("id", "column 'id' holds int64, not strings"),
])
def test_a_wrong_column_is_an_error_even_with_skip_bad(tmp_path, suffix, column, problem):
    docs = documents(5, seed=1)
    write = write_parquet if suffix == ".parquet" else write_arrow
    path = write(tmp_path / f"a{suffix}", docs)
    with pytest.raises(DataError, match=rf"a\{suffix}: {problem}"):
        read(path, json_field=column, skip_bad=True)


def damage_row_group(path: Path, group: int) -> None:
    """Flip the last bytes of the text column's chunk in one row group: page data, which its
    checksum catches whatever the compression."""
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(0)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    raw = bytearray(path.read_bytes())
    for i in range(end - 8, end):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_corrupt_parquet_row_group_is_named_or_skipped_and_counted(tmp_path):
    docs = documents(3 * ROWS, seed=5)
    path = write_parquet(tmp_path / "a.parquet", docs)
    damage_row_group(path, 1)
    with pytest.raises(DataError, match=r"a\.parquet: row group 1 of 3 \(rows 16-31\) is corrupt \(.*CRC checksum"):
        read(path)
    kept, stats = read(path, skip_bad=True)
    assert kept == docs[:ROWS] + docs[2 * ROWS:] and stats.skipped == ROWS and not stats.truncated


def test_truncated_parquet_file_is_named_or_counted(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", documents(3 * ROWS, seed=5))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(DataError, match=r"a\.parquet: not a readable Parquet file \(.*footer"):
        read(path)
    kept, stats = read(path, skip_bad=True)
    assert kept == [] and stats.truncated


def test_truncated_arrow_file_names_the_record_batch_or_keeps_the_batches_before(tmp_path):
    docs = documents(4 * ROWS, seed=6)
    path = write_arrow(tmp_path / "a.arrow", docs)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(DataError, match=r"a\.arrow: record batch [12] is corrupt or truncated"):
        read(path)
    kept, stats = read(path, skip_bad=True)
    assert stats.truncated and 0 < len(kept) < len(docs) and len(kept) % ROWS == 0 and kept == docs[: len(kept)]


def test_missing_pyarrow_names_the_input_and_the_extra(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "a.parquet", documents(3, seed=1))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(DataError, match=r"a\.parquet is a Parquet or Arrow input, which needs pyarrow: "
                                        r"pip install megatron-ttt\[parquet\]"):
        read(path)


def test_directory_inputs_must_be_one_saved_dataset(tmp_path, tokenizer, capsys):
    save_to_disk(tmp_path / "dict" / "train", [documents(3, seed=1)])
    (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (tmp_path / "plain").mkdir()
    for directory, problem in (("dict", r"holds a DatasetDict \(splits: train\); give the directory of one split"),
                               ("plain", "is a directory without state.json")):
        assert main(["data", "shard", "--tokenizer", str(tokenizer.path), "--output", str(tmp_path / "ds"),
                     "--seq-len", "8", "--quiet", "--input", str(tmp_path / directory)]) == 2
        assert problem.replace("\\", "") in capsys.readouterr().err


def test_one_tokenizer_from_json_lines_and_parquet_each_with_its_own_field(tmp_path, capsys):
    notes = write_jsonl(tmp_path / "changelog.jsonl", documents(120, seed=5), field="message")
    code = write_parquet(tmp_path / "code.parquet", documents(80, seed=6), column="content")
    train = ["data", "train-tokenizer", "--vocab-size", "300", "--output", str(tmp_path / "sp"),
             "--input", str(notes), str(code)]
    assert main(train + ["--text-column", "message", "content"]) == 0
    out = capsys.readouterr().out
    assert f"{notes}: 120 documents" in out and f"{code}: 80 documents" in out
    read = json.loads((tmp_path / "sp.json").read_text())["read"]
    assert [r["documents"] for r in read.values()] == [120, 80]

    assert main(train + ["--text-column", "message"]) == 2, "code.parquet has no column 'message'"
    assert "code.parquet: no column 'message' (columns: content, id)" in capsys.readouterr().err
    assert main(train + ["--text-column", "content", "--skip-bad"]) == 2, "every changelog record lacks 'content'"
    assert ("changelog.jsonl: 120 of 120 records skipped (100.0%), more than --skip-bad 0.01 allows; the first: "
            "line 1: no field 'content' (fields: id, message)") in capsys.readouterr().err
    assert main(train + ["--text-column", "a", "b", "c"]) == 2
    assert "--text-column names 3 fields for 2 inputs" in capsys.readouterr().err
