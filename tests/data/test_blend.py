"""Blends: the schedule's evenness over every window, each source's own stream, exact resume of a
blended loader across kills and data-parallel sizes, and the config's errors."""

import json
import shutil

import numpy as np
import pytest

from megatron_ttt.config.loading import ConfigError, blend_entries
from megatron_ttt.config.sections import DataSection
from megatron_ttt.data import DataError
from megatron_ttt.data.blend import BlendSchedule, quotas
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.training.data import training_data


def window_error(schedule: BlendSchedule, weights: list[float], window: int, length: int) -> float:
    """The largest |count - weight x window| of any source over every window in [0, length)."""
    sources, _ = schedule(np.arange(length))
    w = np.asarray(weights) / sum(weights)
    worst = 0.0
    for s in range(len(weights)):
        counts = np.concatenate([[0], np.cumsum(sources == s)])
        worst = max(worst, np.abs(counts[window:] - counts[:-window] - w[s] * window).max())
    return worst


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1], [0.95, 0.05], [1, 12.5], [0.1234567, 0.8765433]])
def test_two_sources_follow_the_weights_within_one_sample_in_every_window(weights):
    # Across a period boundary too: a short period makes the test see several.
    for period in (2**20, 5000):
        schedule = BlendSchedule(weights, period)
        assert window_error(schedule, weights, 1000, 3 * 5000 + 777) <= 1.0, (weights, period)


@pytest.mark.parametrize("seed", range(4))
def test_more_sources_stay_within_two_samples_in_every_window(seed):
    weights = list(np.random.default_rng(seed).random(3 + seed % 3) + 0.02)
    assert window_error(BlendSchedule(weights, 20000), weights, 1000, 50000) < 2.0


def test_each_source_reads_its_own_stream_in_order_and_counts_match():
    schedule = BlendSchedule([0.5, 0.3, 0.2], 1000)
    sources, indices = schedule(np.arange(4321))
    for s in range(3):
        assert np.array_equal(indices[sources == s], np.arange((sources == s).sum()))
    for p in (0, 1, 999, 1000, 1001, 4321):
        assert np.array_equal(schedule.consumed(p), np.bincount(sources[:p], minlength=3))
    late = np.arange(10**9, 10**9 + 2000)  # random access far into the stream
    late_sources, late_indices = schedule(late)
    assert np.array_equal(late_indices[late_sources == 0][:3] - schedule.consumed(10**9)[0], [0, 1, 2])


def test_quotas_sum_to_the_period_and_refuse_what_cannot_be_scheduled():
    assert quotas([0.7, 0.2, 0.1], 10).tolist() == [7, 2, 1] and quotas([1, 1, 1], 1000).sum() == 1000
    with pytest.raises(ValueError, match="must be positive"):
        quotas([1.0, 0.0])
    with pytest.raises(ValueError, match="at least 1/1000"):
        quotas([1.0, 1e-6], 1000)


def keys(batches) -> list[tuple[int, int]]:
    return [(s, i) for b in batches for s, i in zip(b.sources.tolist(), b.sample_ids.tolist())]


def run_steps(loader: TokenLoader, steps: int):
    it = iter(loader)
    return [next(it) for _ in range(steps)]


def blended(manifests, mb, rank=0, size=1, workers=0):
    return TokenLoader(manifests, LoaderConfig(micro_batch_size=mb, num_workers=workers), rank, size, [0.6, 0.4])


def test_a_blend_resumes_exactly_after_two_kills_and_data_parallel_changes(manifest, small_manifest):
    sources = [manifest, small_manifest]
    uninterrupted = keys(run_steps(blended(sources, 12), 30))
    consumed, state, got = 0, None, []
    for steps, size in ((7, 2), (11, 3), (12, 1)):  # 12 samples per step at every DP size
        ranks = [blended(sources, 12 // size, r, size, workers=1 if size == 2 else 0) for r in range(size)]
        for loader in ranks:
            if state is not None:
                loader.load_state_dict(state)
        per_rank = [run_steps(loader, steps) for loader in ranks]
        got += [k for step in zip(*per_rank) for b in step for k in keys([b])]
        state, consumed = ranks[0].state_dict(), consumed + 12 * steps
        assert state["consumed_samples"] == consumed
    assert got == uninterrupted


def test_a_small_source_starts_a_new_epoch_with_a_new_shuffle(manifest, small_manifest):
    loader = blended([manifest, small_manifest], 10)
    n = loader.samples_per_epoch[1]
    steps = 1
    while True:
        got = keys(run_steps(blended([manifest, small_manifest], 10), steps))
        small = [i for s, i in got if s == 1]
        if len(small) >= 2 * n:
            break
        steps *= 2
    first, second = small[:n], small[n:2 * n]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    loader.consumed_samples = len(got)
    assert loader.per_source()[1] == len(small)


def test_a_changed_blend_is_refused_on_resume(manifest, small_manifest):
    state = blended([manifest, small_manifest], 4).state_dict()
    other = TokenLoader([manifest, small_manifest], LoaderConfig(micro_batch_size=4, num_workers=0), weights=[0.5, 0.5])
    with pytest.raises(DataError, match="fingerprint differ"):
        other.load_state_dict(state)


@pytest.mark.parametrize("blend, message", [
    ("0.7 a 0.3", "give pairs of a weight and a manifest"),
    ("heavy a 0.3 b", "'heavy' \\(before a\\) is not a weight"),
    ("0.7 a 0 b", "the weight of b is 0; weights must be positive"),
    ("0.7 a -1 b", "the weight of b is -1"),
    ("0.7 a inf b", "the weight of b is inf"),
    ("0.5 a 0.5 a", "names the same manifest more than once \\(a\\)"),
    ("0.5 /d/web 0.5 /d/web/manifest.json", "more than once \\(/d/web, /d/web/manifest.json\\)"),
    ("1 a 1e-7 b", "the weight of b is below 1/1048576 of the sum"),
])
def test_blend_syntax_errors_name_the_entry(blend, message):
    with pytest.raises(ConfigError, match=message):
        blend_entries(DataSection(blend=blend))
    with pytest.raises(ConfigError, match="both set"):
        blend_entries(DataSection(blend="1 a 1 b", manifest="c"))


def test_blend_sources_are_checked_before_training(manifest, small_manifest, tmp_path):
    good = f"0.6 {manifest.directory} 0.4 {small_manifest.directory}"
    data = training_data(DataSection(blend=good, seq_len=24), tmp_path)
    assert data.weights == [0.6, 0.4] and data.names == ["ds", "small"]
    with pytest.raises(DataError, match=f"manifest {tmp_path / 'missing'} does not exist"):
        training_data(DataSection(blend=f"1 {manifest.directory} 1 {tmp_path / 'missing'}", seq_len=24), tmp_path)
    with pytest.raises(DataError, match="holds samples of seq-len 24; the config asks for data.seq_len=32"):
        training_data(DataSection(blend=good, seq_len=32), tmp_path)
    retokenized = tmp_path / "retokenized"
    shutil.copytree(small_manifest.directory, retokenized)
    body = json.loads((retokenized / "manifest.json").read_text())
    body["settings"]["tokenizer"] |= {"path": "other.model", "sha256": "f" * 64}
    (retokenized / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(DataError, match=f"{retokenized} was tokenized with other.model .* a blend needs one tokenizer"):
        training_data(DataSection(blend=f"1 {manifest.directory} 1 {retokenized}", seq_len=24), tmp_path)
    renamed = tmp_path / "renamed"  # the same tokenizer model, recorded under another path
    shutil.copytree(small_manifest.directory, renamed)
    body = json.loads((renamed / "manifest.json").read_text())
    body["settings"]["tokenizer"]["path"] = "elsewhere/sp.model"
    (renamed / "manifest.json").write_text(json.dumps(body))
    assert training_data(DataSection(blend=f"1 {manifest.directory} 1 {renamed}", seq_len=24), tmp_path).names == [
        "ds", "renamed"]
