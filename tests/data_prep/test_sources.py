"""Reading documents: formats, compression, and every kind of bad record."""

import gzip
import json

import pytest
import zstandard

from megatron_ttt.data import DataError
from tests.data_prep.corpora import documents, read, write_jsonl


def test_text_blank_line_and_line_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\n\nsecond doc\n   \nthird\r\n")
    assert read(path)[0] == ["first line\nsame doc", "second doc", "third"]
    docs, stats = read(path, text_docs="line")
    assert docs == ["first line", "same doc", "second doc", "third"]
    assert stats.empty == 3


def test_jsonl_field_and_compressed_copies_agree(tmp_path):
    docs = documents(30, seed=2)
    plain = write_jsonl(tmp_path / "a.jsonl", docs, field="body")
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for path in (plain, gz, zst):
        assert read(path, json_field="body")[0] == docs


def test_zst_of_several_frames(tmp_path):
    docs = documents(20, seed=3)
    raw = write_jsonl(tmp_path / "a.jsonl", docs).read_bytes()
    half = raw.index(b"\n", len(raw) // 2) + 1
    zst = tmp_path / "b.jsonl.zst"
    c = zstandard.ZstdCompressor()
    zst.write_bytes(c.compress(raw[:half]) + c.compress(raw[half:]))
    assert read(zst)[0] == docs


def test_empty_documents_are_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": ""}\n{"text": "  \\n "}\n{"text": "kept"}\n\n')
    docs, stats = read(path)
    assert docs == ["kept"] and stats.empty == 2


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_invalid_utf8_is_replaced_or_skipped_and_counted(tmp_path, fmt):
    path = tmp_path / ("a.txt" if fmt == "text" else "a.jsonl")
    bad = b"caf\xe9 \xff\xfe ok"
    if fmt == "text":
        path.write_bytes(b"good one\n\n" + bad + b"\n\ngood two\n")
    else:
        path.write_bytes(b'{"text": "good one"}\n{"text": "' + bad + b'"}\n{"text": "good two"}\n')
    docs, stats = read(path)
    assert docs == ["good one", "caf\ufffd \ufffd\ufffd ok", "good two"] and stats.bad_utf8 == 1
    docs, stats = read(path, bad_utf8="skip")
    assert docs == ["good one", "good two"] and stats.bad_utf8 == 1


@pytest.mark.parametrize("line, problem", [
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"title": "x"}', "no field 'text'"),
    (b'{"text": 5}', "field 'text' is a int"),
    (b'{"text": "unterminated', "not valid JSON"),
])
def test_bad_json_record_names_file_and_line_or_is_skipped(tmp_path, line, problem):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n' + line + b'\n{"text": "three"}\n')
    with pytest.raises(DataError, match=rf"a\.jsonl:2: {problem}"):
        read(path)
    docs, stats = read(path, skip_bad=True)
    assert docs == ["one", "three"] and stats.skipped == 1


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_truncated_compressed_file(tmp_path, suffix):
    docs = documents(3000, seed=4)  # several 128 KiB zstd blocks, so a prefix survives
    raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    packed = gzip.compress(raw) if suffix == ".gz" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"a.jsonl{suffix}"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    with pytest.raises(DataError, match=rf"a\.jsonl{suffix}: compressed stream is truncated"):
        read(path)
    kept, stats = read(path, skip_bad=True)
    assert stats.truncated and 0 < len(kept) < len(docs) and kept == docs[: len(kept)]


def test_missing_input_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.txt does not exist"):
        read(tmp_path / "nope.txt")
