"""Tokenize-pack-shard: exact packing, manifests, worker independence, resumption and slices."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import webdataset as wds

from megatron_ttt.cli import main
from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.tokenizer import file_sha256
from megatron_ttt.data_prep.merge import merge_manifests, slice_manifests
from megatron_ttt.data_prep.pack import token_dtype
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.data_prep.sources import SourceOptions, SourceStats, iter_documents
from tests.data_prep.corpora import settings, shard, write_corpus, write_jsonl


def samples_via_webdataset(manifest: Manifest, split: str) -> list[tuple[str, np.ndarray]]:
    urls = [str(manifest.directory / e.path) for e in manifest.shards[split]]
    return [(s["__key__"], np.frombuffer(s["tok"], dtype=manifest.dtype))
            for s in wds.WebDataset(urls, shardshuffle=False)] if urls else []


def test_samples_are_the_document_stream_cut_into_equal_pieces(tmp_path, tokenizer):
    inputs = write_corpus(tmp_path / "in", files=2)
    m = shard(tmp_path, "ds", tokenizer, inputs, seq_len=50, shard_bytes=3000, val_fraction=0.0)
    got = samples_via_webdataset(m, "train")
    assert all(s.size == 51 for _, s in got) and m.dtype == np.uint16
    for task, path in enumerate(inputs):
        docs = list(iter_documents(path, SourceOptions(), SourceStats()))
        encoded = [ids + [tokenizer.eos_id] for ids in tokenizer.encode(docs)]
        stream = np.concatenate(encoded)
        mine = np.concatenate([s for key, s in got if key.startswith(f"t{task:05d}-")])
        assert mine.size == stream.size // 51 * 51 and m.tasks[task].dropped_tokens["train"] == stream.size % 51
        np.testing.assert_array_equal(mine, stream[: mine.size])
        starts = np.cumsum([0] + [len(ids) for ids in encoded])[:-1]
        assert m.tasks[task].documents == len(docs)
        assert sum(e.documents for e in m.shards["train"] if e.task == task) == (starts < mine.size).sum()
    assert len(m.shards["train"]) > 2 * len(inputs)  # several shards per task at this --shard-size
    for e in m.shards["train"]:
        path = m.directory / e.path
        assert file_sha256(path) == e.sha256 and e.size_bytes == path.stat().st_size and e.tokens == 51 * e.samples


def test_token_dtype_follows_the_vocabulary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_validation_split_holds_whole_documents(tmp_path, tokenizer):
    inputs = write_corpus(tmp_path / "in", files=2, docs_per_file=200)
    m = shard(tmp_path, "ds", tokenizer, inputs, val_fraction=0.2, seq_len=16)
    train, val = (sum(t.tokens[s] + t.dropped_tokens[s] for t in m.tasks) for s in ("train", "val"))
    assert 0.1 < val / (train + val) < 0.3
    full = shard(tmp_path, "all", tokenizer, inputs, seq_len=16, val_fraction=0.0)
    assert train + val == sum(t.tokens["train"] + t.dropped_tokens["train"] for t in full.tasks)


def test_manifest_does_not_depend_on_worker_count(tmp_path, tokenizer):
    inputs = write_corpus(tmp_path / "in", files=4)
    one = shard(tmp_path, "w1", tokenizer, inputs, workers=1, val_fraction=0.1, shard_bytes=2000)
    two = shard(tmp_path, "w2", tokenizer, inputs, workers=2, val_fraction=0.1, shard_bytes=2000)
    assert one.to_json() == two.to_json()


def test_slices_merge_into_the_full_manifest(tmp_path, tokenizer, monkeypatch):
    inputs = write_corpus(tmp_path / "in", files=5)
    full = shard(tmp_path, "full", tokenizer, inputs, val_fraction=0.1)
    s = settings(tokenizer, inputs, val_fraction=0.1)
    out = tmp_path / "sliced"
    for index in (0, 2):
        shard_corpus(ShardJob(out, s, task_index=index, num_tasks=3), show_progress=False)
    with pytest.raises(DataError, match=r"slices \[1\] of 3 are missing"):
        merge_manifests(slice_manifests(out), out / "manifest.json")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert main(["data", "shard", "--tokenizer", s.tokenizer.path, "--output", str(out), "--seq-len", "64",
                 "--val-fraction", "0.1", "--quiet", "--input", *map(str, inputs)]) == 0
    assert (out / "manifests" / "slice-00001-of-00003.json").exists()
    merged = merge_manifests(slice_manifests(out), out / "manifest.json")
    assert merged.to_json() == full.to_json() and all(e.size_bytes for e in merged.entries())


def test_changed_settings_refuse_to_resume(tmp_path, tokenizer):
    inputs = write_corpus(tmp_path / "in", files=1)
    shard(tmp_path, "ds", tokenizer, inputs, seq_len=64)
    with pytest.raises(DataError, match="seq_len differ"):
        shard(tmp_path, "ds", tokenizer, inputs, seq_len=32)


def _shard_command(tokenizer, inputs, out):
    return [sys.executable, "-m", "megatron_ttt.cli", "data", "shard", "--tokenizer", str(tokenizer.path),
            "--output", str(out), "--seq-len", "32", "--shard-size-mb", "0.02", "--quiet", "--input", *map(str, inputs)]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_manifest(tmp_path, tokenizer):
    inputs = [write_jsonl(tmp_path / f"in-{i}.jsonl", [f"document {i} {j} " * (20 + j % 50) for j in range(700)])
              for i in range(6)]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_shard_command(tokenizer, inputs, out), stderr=subprocess.PIPE)
    # Kill once task 1 has started writing shards: task 0 is done, task 1 is half-written.
    while not any((out / "train").glob("t00001-*.tar")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "tasks").glob("*.json"))
    assert 0 < len(done) < len(inputs), f"the kill should land mid-run, found markers {done}"
    subprocess.run(_shard_command(tokenizer, inputs, out), check=True, capture_output=True)
    subprocess.run(_shard_command(tokenizer, inputs, tmp_path / "clean"), check=True, capture_output=True)
    resumed, clean = ((d / "manifest.json").read_text() for d in (out, tmp_path / "clean"))
    assert json.loads(resumed)["totals"]["train"]["shards"] > len(inputs)
    assert resumed == clean
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in (tmp_path / "clean" / "train").iterdir())


def test_cli_reports_bad_input_without_traceback(tmp_path, tokenizer, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n"just a string"\n')
    good = write_corpus(tmp_path / "in", files=1)[0]
    args = ["data", "shard", "--tokenizer", str(tokenizer.path), "--output", str(tmp_path / "ds"), "--seq-len", "8",
            "--quiet", "--input", str(good), str(bad)]
    assert main(args) == 2
    assert "bad.jsonl:2: a JSON str, not an object" in capsys.readouterr().err
    assert (tmp_path / "ds" / "tasks" / "t00000.json").exists(), "the good task's work is kept"
    assert main(args + ["--skip-bad"]) == 2, "other settings than the first attempt"
    assert "skip_bad differ" in capsys.readouterr().err
    only_bad = args[:5] + [str(tmp_path / "only-bad")] + args[6:-2] + [str(bad)]
    assert main(only_bad) == 2  # no task finished: the corrected command may take the folder over
    capsys.readouterr()
    assert main(only_bad + ["--skip-bad"]) == 2, "half the file is more than a bare --skip-bad allows"
    assert ("bad.jsonl: 1 of 2 records skipped (50.0%), more than --skip-bad 0.01 allows; the first: line 2: a JSON "
            "str, not an object") in capsys.readouterr().err
    assert main(only_bad + ["--skip-bad", "0.5"]) == 0
    assert "was begun with other settings (skip_bad) by a run that finished no task" in capsys.readouterr().err


def test_cli_trains_a_tokenizer_with_the_expected_settings(tmp_path):
    docs = write_jsonl(tmp_path / "a.jsonl", [f"Value {i}: the quick brown fox, costs {i * 37} euros." for i in range(300)])
    assert main(["data", "train-tokenizer", "--input", str(docs), "--vocab-size", "300", "--output",
                 str(tmp_path / "sp")]) == 0
    from megatron_ttt.data import Tokenizer

    tok = Tokenizer(tmp_path / "sp.model")
    p = tok.processor
    assert (p.unk_id(), p.bos_id(), p.eos_id(), p.pad_id()) == (0, 1, 2, 3)
    ids = p.encode("price 1234  ok\u00e9\u4e2d")
    assert p.decode(ids) == "price 1234  ok\u00e9\u4e2d", "whitespace kept, no unknown characters (byte fallback)"
    assert [p.id_to_piece(i) for i in p.encode("1234")][-4:] == ["1", "2", "3", "4"], "digits split"
    recorded = json.loads((tmp_path / "sp.json").read_text())
    assert recorded["tokenizer"]["sha256"] == file_sha256(tmp_path / "sp.model")
