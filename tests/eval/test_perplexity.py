"""`mttt eval perplexity`: the report's numbers against an independent computation, the
by-position buckets against the total, TP=2, CP=2 and DP=2 against one process, and clear errors."""

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_ttt.cli import main
from megatron_ttt.data import Tokenizer
from megatron_ttt.data.loader import ShardedSamples
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.eval.perplexity import PerplexityConfig, TokenStream, evaluate_context
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.eval.perplexity_report import bucket_edges
from tests.data_prep.corpora import settings, write_corpus
from tests.distributed import run_distributed
from tests.eval.conftest import SEQ_LEN, eval_command, loaded_model


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def independent_losses(data, contexts: list[int], max_windows: int) -> dict[int, float]:
    """The val split read sample by sample, joined, cut into windows; -mean of token_logprobs."""
    samples = ShardedSamples(data.manifest, "val")
    stream = np.concatenate([samples[i] for i in range(len(samples))]).astype(np.int64)
    out = {}
    with loaded_model(data.model_dir) as (model, _):
        for c in contexts:
            n = min(len(stream) // (c + 1), max_windows)
            windows = torch.from_numpy(stream[:n * (c + 1)].reshape(n, c + 1))
            out[c] = -token_logprobs(model, windows, batch_size=3).double().mean().item()
    return out


def test_report_matches_an_independent_computation(eval_data, tmp_path, capsys):
    out = tmp_path / "report"
    args = eval_command("perplexity", eval_data, "--context", "32,64", "--batch-size", "3", "--max-samples", "7",
                        "--out", str(out))
    assert main(args) == 0, capsys.readouterr().err
    summary = {int(r["context"]): r for r in read_csv(out / "perplexity.csv")}
    expected = independent_losses(eval_data, [32, 64], 7)
    for c, row in summary.items():
        assert int(row["windows"]) == 7 and int(row["tokens"]) == 7 * c
        assert float(row["loss"]) == pytest.approx(expected[c], rel=1e-6)
        assert float(row["perplexity"]) == pytest.approx(math.exp(expected[c]), rel=1e-6)
        buckets = [r for r in read_csv(out / "perplexity_by_position.csv") if int(r["context"]) == c]
        assert [int(b["start"]) for b in buckets] + [c] == bucket_edges(c, "log", 0)
        assert sum(int(b["tokens"]) for b in buckets) == int(row["tokens"])
        assert sum(float(b["nll_sum"]) for b in buckets) == pytest.approx(float(row["nll_sum"]), rel=1e-12)
    png = (out / "perplexity_by_position.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_blend_scores_each_source_and_their_mean_by_weight(eval_data, tmp_path, capsys):
    inputs = write_corpus(tmp_path / "in", files=1, docs_per_file=30)
    tokenizer = Tokenizer(eval_data.tokenizer_path)
    other = ShardJob(tmp_path / "other", settings(tokenizer, inputs, seq_len=SEQ_LEN, val_fraction=0.5), workers=1)
    shard_corpus(other, show_progress=False)
    blend = eval_command("perplexity", eval_data, str(tmp_path / "other"), "--weights", "3", "1", "--context", "32",
                         "--max-samples", "4", "--out", str(tmp_path / "blend"))
    assert main(blend) == 0, capsys.readouterr().err
    rows = {r["source"]: r for r in read_csv(tmp_path / "blend" / "perplexity.csv")}
    assert list(rows) == ["ds", "other", "blend"]
    for name, data in (("ds", eval_data.manifest_path), ("other", tmp_path / "other")):
        alone = eval_command("perplexity", eval_data, "--context", "32", "--max-samples", "4", "--out",
                             str(tmp_path / name))
        alone[alone.index("--data") + 1] = str(data)
        assert main(alone) == 0
        assert read_csv(tmp_path / name / "perplexity.csv")[0]["loss"] == rows[name]["loss"]
    mean = 0.75 * float(rows["ds"]["loss"]) + 0.25 * float(rows["other"]["loss"])
    assert float(rows["blend"]["loss"]) == pytest.approx(mean, rel=1e-12)
    assert float(rows["blend"]["perplexity"]) == pytest.approx(math.exp(mean), rel=1e-12)
    by_position = read_csv(tmp_path / "blend" / "perplexity_by_position.csv")
    assert {r["source"] for r in by_position} == {"ds", "other"}


def test_linear_buckets_cover_the_context():
    assert bucket_edges(64, "linear", 5) == [0, 13, 26, 39, 52, 64]
    assert bucket_edges(64, "log", 0) == [0, 1, 2, 4, 8, 16, 32, 64]


def parallel_nll(rank: int, world: int, store, tp: int, model_dir: str, manifest, cp: int = 1) -> np.ndarray:
    stream = TokenStream(ShardedSamples(manifest, "val"))
    config = PerplexityConfig((64,), batch_size=2, max_samples=5)
    with loaded_model(model_dir, tp, cp, store) as (model, groups):
        cp_group = groups.cp if cp > 1 else None
        return evaluate_context(model, stream, 64, config, groups.dp, cp_group=cp_group).position_nll


@pytest.mark.parametrize("tp, cp", [(2, 1), (1, 2), pytest.param(1, 1, marks=pytest.mark.slow)],
                         ids=["TP=2", "CP=2", "DP=2"])
def test_two_ranks_equal_one(eval_data, tp, cp):
    one = parallel_nll(0, 1, None, 1, str(eval_data.model_dir), eval_data.manifest)
    two = run_distributed(2, parallel_nll, tp, str(eval_data.model_dir), eval_data.manifest, cp)
    for rank_nll in two:
        np.testing.assert_allclose(rank_nll, one, rtol=1e-5)
    assert abs(two[0].sum() - one.sum()) / one.sum() < 1e-6


@pytest.mark.parametrize("change,message", [
    (["--data", "MISSING"], r"manifest .*MISSING.*does not exist"),
    (["--context", "36"], r"--context 36: must be a positive multiple of the model's mini-batch size 8"),
    (["--context", "800000"], r"--context 800000: the validation split of .* holds \d+ tokens, fewer than one window"),
    (["--checkpoint", "SMALL"], r"vocabulary of 600, larger than the model's 512"),
    (["--batch-size", "0"], r"--batch-size must be >= 1"),
    (["--weights", "1 2"], r"--weights 1.0 2.0: give one positive weight per --data manifest \(1\)"),
])
def test_bad_inputs_are_named(eval_data, tmp_path, capsys, change, message):
    values = {"--checkpoint": str(eval_data.model_dir), "--data": str(eval_data.manifest_path), "--context": "32"}
    flag, value = change
    values[flag] = {"MISSING": str(tmp_path / "MISSING"), "SMALL": str(eval_data.small_vocab_dir)}.get(value, value)
    args = ["eval", "perplexity", "--out", str(tmp_path / "out")] + [x for flag, value in values.items()
                                                                     for x in (flag, *value.split())]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
