"""Damaged shards: found at the start of training (a stat, or data.verify=full's hashes), or
where the loader reads them, and reported in one line naming the shard, the sample and what to do."""

import json
import re
import shutil
import tarfile
from dataclasses import replace

import pytest

from megatron_ttt.cli import main, report
from megatron_ttt.config.sections import DataSection
from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.errors import ShardReadError
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.data.shard_reader import BLOCK, member_stride
from megatron_ttt.data_prep import verify
from megatron_ttt.data_prep.verify import verify_shards
from megatron_ttt.training import data as training
from megatron_ttt.training.data import check_shards, training_data


@pytest.fixture
def copy(manifest, tmp_path):
    """A private copy of the dataset that a test may damage."""
    shutil.copytree(manifest.directory, tmp_path / "ds")
    return Manifest.load(tmp_path / "ds")


def start(manifest: Manifest, check: str = "size"):
    """What pretraining does with the manifest before it trains."""
    return training_data(DataSection(manifest=str(manifest.directory), seq_len=24, verify=check), manifest.directory)


def read_all(manifest: Manifest, **config):
    loader = TokenLoader(manifest, LoaderConfig(micro_batch_size=4, shuffle=False, **{"num_workers": 0} | config))
    it = iter(loader)
    for _ in range(loader.samples_per_epoch // 4):
        next(it)


def lit(path) -> str:
    """A path, matched literally in a pattern."""
    return re.escape(str(path))


def stride(manifest: Manifest) -> int:
    return member_stride(manifest.settings.sample_tokens * manifest.dtype.itemsize)


def edit(manifest: Manifest, split: str, shard: int, change) -> tuple:
    """Apply `change` to the bytes of a shard; (its entry, its path)."""
    entry = manifest.shards[split][shard]
    path = manifest.directory / entry.path
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(data)))
    return entry, path


def flip_token_bit(data: bytearray) -> bytearray:
    data[BLOCK + 4] ^= 0x01  # the low byte of sample 0's third token: still a valid id, same size
    return data


def repair_hint(manifest: Manifest, entry) -> str:
    marker = manifest.directory / "tasks" / f"t{entry.task:05d}.json"
    return rf"delete {lit(marker)} and re-run .* `mttt data verify {lit(manifest.directory)}`"


def test_a_truncated_shard_stops_the_run_at_start_naming_it(copy):
    entry, path = edit(copy, "train", 1, lambda data: data[:-BLOCK])
    expected = (rf"^shard {lit(path)} is truncated: .* the manifest says {entry.size_bytes:,}; restore it from a "
                rf"copy, or {repair_hint(copy, entry)}$")
    with pytest.raises(DataError, match=expected):
        start(copy)


def test_a_missing_shard_is_named_and_so_are_the_others(copy):
    missing = [copy.directory / e.path for e in (copy.shards["val"][0], copy.shards["train"][2])]
    for path in missing:
        path.unlink()
    with pytest.raises(DataError, match=rf"^shard {lit(missing[1])} is missing \(and 1 other shard: "
                                        r"`mttt data verify` lists all\)"):
        start(copy)
    with pytest.raises(DataError, match=rf"2 of {len(copy.entries())} shards do not match .*\n  shard "
                                        rf"{lit(missing[1])} is missing\n  shard {lit(missing[0])} is missing\n"
                                        r".*delete .*t00000.json"):
        verify_shards(copy)


def test_same_size_damage_passes_the_size_check_and_fails_the_full_one(copy):
    entry, path = edit(copy, "train", 0, flip_token_bit)
    start(copy)
    with pytest.raises(DataError, match=rf"^shard {lit(path)} is damaged: sha256 .*, the manifest says .*; restore it"):
        start(copy, check="full")


def test_a_manifest_without_shard_sizes_loads_and_checks_a_lower_bound(copy, capsys):
    path = copy.directory / "manifest.json"
    body = json.loads(path.read_text())
    for entries in body["shards"].values():
        for entry in entries:
            del entry["size_bytes"]
    path.write_text(json.dumps(body))
    old = Manifest.load(path)
    assert all(e.size_bytes is None for e in old.entries())
    edit(old, "train", 0, lambda data: data[:-BLOCK])  # only the tar's end blocks: every sample is whole
    start(old)
    assert "records no shard sizes" in capsys.readouterr().err
    read_all(old)
    entry, shard = edit(old, "train", 1, lambda data: data[:stride(old)])
    with pytest.raises(DataError, match=rf"^shard {lit(shard)} is truncated: {stride(old):,} bytes, its "
                                        rf"{entry.samples} samples need {entry.samples * stride(old):,}; restore it"):
        start(old)


def test_the_processes_of_a_node_share_the_checks_and_name_every_bad_shard(copy, monkeypatch):
    entries = copy.entries()
    for entry in entries[2:4]:
        (copy.directory / entry.path).unlink()
    hashed, seen, sha256 = [], {}, verify.file_sha256
    monkeypatch.setattr(verify, "file_sha256", lambda path: hashed.append(path) or sha256(path))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setattr(training, "every_rank", lambda items, rank=rank: seen.setdefault(rank, items) and [])
        check_shards([copy], full=True)
    assert [position for position, _ in seen[0]] == [2] and [position for position, _ in seen[1]] == [3]
    assert sorted(hashed) == sorted(copy.directory / e.path for i, e in enumerate(entries) if i not in (2, 3))
    monkeypatch.setattr(training, "every_rank", lambda items: [seen[0], seen[1]])
    with pytest.raises(DataError, match=rf"^shard {lit(copy.directory / entries[2].path)} is missing \(and 1 other"):
        check_shards([copy], full=False)


def key_of(path, index: int) -> str:
    with tarfile.open(path) as tar:
        return tar.getnames()[index].removesuffix(".tok")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_sample_read_by_the_loader_is_one_line(manifest, copy, workers):
    index = 2
    key = key_of(manifest.directory / manifest.shards["train"][1].path, index)

    def damage_header(data: bytearray) -> bytearray:
        data[index * stride(copy) + 3] ^= 0xFF
        return data

    _, path = edit(copy, "train", 1, damage_header)
    with pytest.raises(ShardReadError) as caught:
        read_all(copy, num_workers=workers)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"shard {path}, sample {index} (key {key}): its tar header is damaged (the header "
                              "checksum is wrong); restore it from a copy, or delete ")
    assert message.endswith(f"`mttt data verify {copy.directory}`")


def test_a_sample_of_the_wrong_length_is_named(copy):
    def shorter_member(data: bytearray) -> bytearray:
        header = data[:BLOCK]
        header[124:136] = b"%011o\0" % 48
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        data[:BLOCK] = header
        return data

    _, path = edit(copy, "train", 0, shorter_member)
    expected = (rf"^shard {lit(path)}, sample 0 \(key t00000-000000000\): it holds 48 bytes \(24 tokens\), "
                r"where a sample of this dataset holds 50 \(25 tokens\); restore")
    with pytest.raises(ShardReadError, match=expected):
        read_all(copy)


def test_a_shard_truncated_after_the_start_is_named_where_it_is_read(copy):
    half = copy.shards["train"][0].samples * stride(copy) // 2
    _, path = edit(copy, "train", 0, lambda data: data[:half])
    with pytest.raises(ShardReadError, match=rf"^shard {lit(path)}, sample \d+ \(key .*\): the shard is truncated: "):
        read_all(copy)


def test_a_shard_truncated_while_the_loader_reads_it_is_named(copy):
    # The loader has the shard open and read from it; then it shrinks (a copy overwriting it, a
    # full disk). A mapped page past the new end would end the process with SIGBUS.
    loader = TokenLoader(copy, LoaderConfig(micro_batch_size=1, shuffle=False, num_workers=0))
    batches = iter(loader)
    next(batches)
    path = copy.directory / copy.shards["train"][0].path
    path.write_bytes(path.read_bytes()[:2 * stride(copy)])
    with pytest.raises(ShardReadError, match=rf"^shard {lit(path)}, sample 2 \(key .*\): the shard was truncated "
                                             rf"while open: {2 * stride(copy):,} bytes, sample 2 ends at "):
        for _ in range(copy.shards["train"][0].samples):
            next(batches)


def test_sha256_at_open_names_the_shard(copy):
    _, path = edit(copy, "train", 0, flip_token_bit)
    read_all(copy)
    with pytest.raises(ShardReadError, match=rf"^shard {lit(path)}, sample 0 .*: the shard has sha256 .* the "
                                             "manifest says"):
        read_all(copy, verify_sha256=True)


def test_token_beyond_the_vocabulary_names_the_shard(copy):
    small = replace(copy.settings, tokenizer=replace(copy.settings.tokenizer, vocab_size=50))
    with pytest.raises(ShardReadError, match=r"t00000-000000.tar, sample 0 \(key t00000-000000000\): it holds token "
                                             r"id \d+, beyond .* of 50"):
        read_all(replace(copy, settings=small))


def test_the_commands_report_without_a_traceback_and_exit_2(copy, capsys, monkeypatch):
    _, path = edit(copy, "train", 0, flip_token_bit)
    assert main(["data", "verify", str(copy.directory)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    report_ = err[err.index("mttt data: error: "):]  # after the progress bar
    assert report_.startswith("mttt data: error: 1 of ") and f"\n  shard {path} is damaged: sha256" in report_
    with pytest.raises(ShardReadError) as caught:
        read_all(copy, verify_sha256=True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    report("mttt pretrain", caught.value)
    assert capsys.readouterr().err == f"mttt pretrain: error on rank 1: {caught.value}\n"
