"""The loader: global order, exact resume in a fresh process, data-parallel remap, bad manifests."""

import json
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.data.permutation import FeistelPermutation


def take(loader, steps):
    it = iter(loader)
    return [next(it) for _ in range(steps)]


def ids(batches):
    return [i for b in batches for i in b.sample_ids.tolist()]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 97, 1000, 4099])
def test_permutation_is_a_bijection(n):
    for seed in (0, 1, 12345):
        values = FeistelPermutation(n, seed)(np.arange(n))
        assert np.array_equal(np.sort(values), np.arange(n))
    if n >= 64:
        a, b = FeistelPermutation(n, 0)(np.arange(n)), FeistelPermutation(n, 1)(np.arange(n))
        assert (a != b).mean() > 0.9 and (a != np.arange(n)).mean() > 0.9


def test_batches_hold_the_shard_samples(manifest):
    loader = TokenLoader(manifest, LoaderConfig(micro_batch_size=5, num_workers=0, shuffle=False))
    urls = [str(manifest.directory / e.path) for e in manifest.shards["train"]]
    expected = np.stack([np.frombuffer(s["tok"], np.uint16) for s in wds.WebDataset(urls, shardshuffle=False)])
    for batch in take(loader, 7):
        rows = expected[batch.sample_ids.numpy()]
        assert np.array_equal(batch.tokens.numpy(), rows[:, :-1]) and np.array_equal(batch.labels.numpy(), rows[:, 1:])
        assert batch.tokens.shape == (5, manifest.settings.seq_len)


def test_each_epoch_visits_every_sample_once(manifest):
    loader = TokenLoader(manifest, LoaderConfig(micro_batch_size=3, num_workers=2))
    n = loader.samples_per_epoch
    seen = ids(take(loader, (2 * n + 2) // 3 + 1))
    first, second = seen[:n], seen[n:2 * n]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n)) and first != second


def test_ranks_split_the_global_stream(manifest):
    whole = ids(take(TokenLoader(manifest, LoaderConfig(micro_batch_size=6, num_workers=0)), 9))
    parts = [take(TokenLoader(manifest, LoaderConfig(micro_batch_size=3, num_workers=1), r, 2), 9) for r in range(2)]
    interleaved = [i for step in zip(*parts) for b in step for i in b.sample_ids.tolist()]
    assert interleaved == whole


def test_context_parallel_ranks_hold_slices_of_the_same_samples(manifest):
    config = LoaderConfig(micro_batch_size=3, num_workers=0)
    whole = take(TokenLoader(manifest, config, 1, 2), 4)
    slices = [take(TokenLoader(manifest, config, 1, 2, context_parallel=(r, 4)), 4) for r in range(4)]
    for step, batch in enumerate(whole):
        parts = [s[step] for s in slices]
        assert all(p.sample_ids.equal(batch.sample_ids) for p in parts)
        assert all(p.tokens.shape[1] == manifest.settings.seq_len // 4 for p in parts)
        for field in ("tokens", "labels"):
            assert np.array_equal(np.concatenate([getattr(p, field).numpy() for p in parts], 1),
                                  getattr(batch, field).numpy())
    with pytest.raises(DataError, match="context-parallel rank 4 is outside 0..3"):
        TokenLoader(manifest, config, context_parallel=(4, 4))
    odd = manifest.settings.seq_len - 1
    with pytest.raises(DataError, match=f"seq-len {manifest.settings.seq_len} does not split over context_parallel "
                                        f"{odd}"):
        TokenLoader(manifest, config, context_parallel=(0, odd))


_RESUME = """
import json, sys
from megatron_ttt.data import Manifest
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
manifest, state, steps, rank, size, mb = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:])
loader = TokenLoader(Manifest.load(manifest), LoaderConfig(micro_batch_size=mb, num_workers=2), rank, size)
loader.load_state_dict(state)
it = iter(loader)
print(json.dumps([i for _ in range(steps) for i in next(it).sample_ids.tolist()]))
"""


def resume_in_fresh_process(manifest, state, steps, rank, size, mb):
    out = subprocess.run([sys.executable, "-c", _RESUME, str(manifest.directory), json.dumps(state), str(steps),
                          str(rank), str(size), str(mb)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_exactly_once(manifest):
    config = LoaderConfig(micro_batch_size=4, num_workers=2)
    n = TokenLoader(manifest, config).samples_per_epoch
    steps = n // 4  # one epoch, minus the straddling batch
    uninterrupted = ids(take(TokenLoader(manifest, config), steps))
    first = TokenLoader(manifest, config)
    head = ids(take(first, 5))
    tail = resume_in_fresh_process(manifest, first.state_dict(), steps - 5, 0, 1, 4)
    assert head + tail == uninterrupted and len(set(head + tail)) == len(head + tail) == 4 * steps
    # The same state resumed at data-parallel size 2 (micro-batch 2) continues the same global stream.
    parts = [resume_in_fresh_process(manifest, first.state_dict(), steps - 5, r, 2, 2) for r in range(2)]
    remapped = [i for s in range(steps - 5) for r in range(2) for i in parts[r][2 * s:2 * s + 2]]
    assert head + remapped == uninterrupted


def test_state_of_another_dataset_is_refused(manifest):
    loader = TokenLoader(manifest, LoaderConfig(micro_batch_size=2, num_workers=0))
    state = loader.state_dict() | {"fingerprint": "0" * 64}
    with pytest.raises(DataError, match="fingerprint differ"):
        loader.load_state_dict(state)
    with pytest.raises(DataError, match="seed differ"):
        TokenLoader(manifest, LoaderConfig(micro_batch_size=2, seed=7, num_workers=0)).load_state_dict(loader.state_dict())


def test_bad_manifests(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "megatron-ttt-shards", "version": 1}))
    with pytest.raises(DataError, match="missing or has a malformed field: 'settings'"):
        Manifest.load(tmp_path)
