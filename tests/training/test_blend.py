"""Pretraining on a blend of two manifests: per-source tokens and validation, exact resume."""

import shutil

import pytest
import torch

from megatron_ttt.data import Tokenizer
from megatron_ttt.data_prep.shard import ShardJob, shard_corpus
from megatron_ttt.config.sections import DataSection
from megatron_ttt.training.data import bundled_manifest_path
from tests.data_prep.corpora import settings, write_corpus
from tests.training.runs import final_weights, losses, metrics, pretrain


@pytest.fixture(scope="module")
def blend(cache, tmp_path_factory):
    """The bundled corpus at 0.7 and a generated one of the same tokenizer at 0.3."""
    bundled = bundled_manifest_path(DataSection(seq_len=64, bundled_vocab_size=512), cache).parent
    root = tmp_path_factory.mktemp("second")
    tokenizer = Tokenizer(str(cache / "tokenizer-bpe-512" / "sp.model"))
    inputs = write_corpus(root / "in", files=1, docs_per_file=12)  # 11 training samples: used up by step 6
    shard_corpus(ShardJob(root / "generated", settings(tokenizer, inputs, seq_len=64, val_fraction=0.4), workers=1),
                 show_progress=False)
    return f"data.blend=0.7 {bundled} 0.3 {root / 'generated'}"


def test_a_blend_trains_logs_each_source_and_resumes_exactly(tmp_path, cache, blend):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    out = pretrain(whole, cache, [blend])
    rows = list(metrics(whole).values())
    tokens = [(r["tokens_shards-bpe-512-L64"], r["tokens_generated"]) for r in rows]
    assert all(a + b == 512 * r["step"] for (a, b), r in zip(tokens, rows))  # every token counted once
    assert abs(tokens[-1][1] / (512 * 6) - 0.3) < 0.02
    for r, before, now in zip(rows, [(0, 0)] + tokens, tokens):  # the blended loss: the sources' token-weighted mean
        drawn = [b - a for a, b in zip(before, now)]
        mean = (drawn[0] * r["train_loss_shards-bpe-512-L64"] + drawn[1] * r["train_loss_generated"]) / sum(drawn)
        assert abs(mean - r["train_loss"]) <= 1e-6 * r["train_loss"], r
    validated = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in validated] == [3, 6]
    for r in validated:
        per_source = 0.7 * r["val_loss_shards-bpe-512-L64"] + 0.3 * r["val_loss_generated"]
        assert abs(r["val_loss"] - per_source) < 1e-9
    assert "ran through its" in out.stdout  # the small generated source starts its next epoch
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    (cut / "checkpoints" / "latest").write_text("step-00000003")
    reweighted = blend.replace("data.blend=0.7", "data.blend=0.6").replace(" 0.3 ", " 0.4 ")
    out = pretrain(cut, cache, [reweighted], check=False)
    assert out.returncode == 2 and f"data.blend: '{blend[11:]}' there, '{reweighted[11:]}' now" in out.stderr, out.stderr
    assert "at step 3" in pretrain(cut, cache, [blend]).stdout
    assert losses(cut) == losses(whole)
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"
