"""A training checkpoint written at TP=2 with ZeRO-2 evaluates at TP=1 as at TP=2, equals
DeepSpeed's own weights, and converts (self-checked) to the reference format and to a model
directory; conversions of older checkpoints are refused."""

import json
import shutil

import pytest
import torch

import megatron_ttt.checkpoint.convert as convert
from megatron_ttt.checkpoint.model_dir import CheckpointError, load_model
from megatron_ttt.checkpoint.reference_io import read_reference
from megatron_ttt.config.sections import DataSection
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from megatron_ttt.training.data import prepare_bundled
from tests.distributed import run_distributed
from tests.training.runs import final_weights, pretrain

TP2_ZERO2 = ["train.steps=3", "parallel.tensor_parallel=2", "parallel.zero_stage=2", "data.micro_batch_size=8"]


@pytest.fixture(scope="module")
def tp2_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    prepare_bundled(DataSection(seq_len=64, bundled_vocab_size=512), cache)
    run = tmp_path_factory.mktemp("tp2") / "run"
    pretrain(run, cache, TP2_ZERO2, nproc=2)
    return run


def evaluate(rank, world, store, directory, tokens):
    """Log-probs of `tokens` and this TP rank's weights, loaded at TP=world."""
    groups = init_parallel(ParallelLayout(world), store=store)
    model = load_model(directory, groups)
    out = token_logprobs(model, tokens), {n: p.detach().clone() for n, p in model.named_parameters()}
    destroy_parallel()
    return out


def convert_at(rank, world, store, direction, src, dst):
    groups = init_parallel(ParallelLayout(world), store=store)
    diff = getattr(convert, direction)(src, dst, groups)
    destroy_parallel()
    return diff


@pytest.mark.slow
def test_tp2_zero2_checkpoint_evaluates_at_tp1_as_at_tp2(tmp_path, tp2_run):
    step = tp2_run / "checkpoints" / "step-00000003"
    vocab = json.loads((step / "model_config.json").read_text())["vocab_size"]
    tokens = torch.randint(0, vocab, (3, 50), generator=torch.Generator().manual_seed(0))
    at_tp2 = run_distributed(2, evaluate, step, tokens)
    (at_tp1, _), = run_distributed(1, evaluate, step, tokens)
    for rank, (logp, weights) in enumerate(at_tp2):
        deepspeed = final_weights(tp2_run, step.name, tp_rank=rank)  # DeepSpeed's own module weights
        assert all(torch.equal(weights[n], deepspeed[n]) for n in weights), rank
        assert torch.equal(logp, at_tp2[0][0])
    # TP=2 adds the row-parallel partial products across ranks: float32 rounding differs.
    difference = (at_tp1 - at_tp2[0][0]).abs().max().item()
    print(f"log-probs at TP=1 vs TP=2: largest difference {difference:.2e}")
    assert difference <= 1e-5, difference


@pytest.mark.slow
def test_training_checkpoint_converts_to_reference_and_model_directory(tmp_path, tp2_run):
    reference, model_dir = tmp_path / "hf", tmp_path / "mttt"
    assert run_distributed(1, convert_at, "mttt_to_hf", tp2_run, reference)[0] <= convert.CHECK_TOLERANCE
    diffs = run_distributed(2, convert_at, "mttt_to_mttt", tp2_run / "checkpoints", model_dir)
    assert max(diffs) <= convert.CHECK_TOLERANCE
    assert sorted(p.name for p in model_dir.iterdir()) == ["checksums.json", "model", "model_config.json",
                                                           "tokenizer.model"]
    cfg, tensors = read_reference(reference)
    (_, weights), = run_distributed(1, evaluate, model_dir, torch.zeros(1, 2, dtype=torch.long))
    assert all(torch.equal(weights[n], local) for n, local in convert.to_local(tensors, cfg).items())


@pytest.mark.usefixtures("single_process_parallel")
class TestSelfCheck:
    @pytest.fixture
    def model_dir(self, tmp_path, groups):
        from tests.checkpoint.test_convert import reference_dir
        from tests.models.tp_cases import TINY

        convert.hf_to_mttt(reference_dir(tmp_path / "ref", TINY), tmp_path / "ours", groups)
        return tmp_path / "ours"

    def test_mttt_to_mttt_catches_a_corrupted_tensor(self, tmp_path, model_dir, monkeypatch, groups):
        real = convert.save_model

        def corrupting(model, directory, tokenizer):
            with torch.no_grad():
                model.blocks[0].mixer.out_proj.weight[3, 5] += 0.5
            real(model, directory, tokenizer)

        monkeypatch.setattr(convert, "save_model", corrupting)
        with pytest.raises(CheckpointError, match=r"mttt-to-mttt .*differ from the source's by .*nothing was written"):
            convert.mttt_to_mttt(model_dir, tmp_path / "copy", groups)
        assert not (tmp_path / "copy").exists() and not (tmp_path / ".copy.checking").exists()

    def test_mttt_to_hf_catches_a_corrupted_tensor(self, tmp_path, model_dir, monkeypatch, groups):
        real = convert.to_full

        def corrupting(*args, **kwargs):
            full = real(*args, **kwargs)
            full["model.layers.1.mlp.down_proj.weight"][0, 0] += 0.5
            return full

        monkeypatch.setattr(convert, "to_full", corrupting)
        with pytest.raises(CheckpointError, match="differ from the source's"):
            convert.mttt_to_hf(model_dir, tmp_path / "hf", groups)
        assert not (tmp_path / "hf").exists()

    def test_uncorrupted_copy_passes(self, tmp_path, model_dir, groups):
        assert convert.mttt_to_mttt(model_dir, tmp_path / "copy", groups) <= convert.CHECK_TOLERANCE
        a, b = load_model(model_dir, groups), load_model(tmp_path / "copy", groups)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))

    def test_a_checkpoint_of_an_older_version_is_refused(self, tmp_path, groups):
        step = tmp_path / "run" / "checkpoints" / "step-00000003"
        step.mkdir(parents=True)
        (step / "run_config.json").write_text("{}")
        (step.parent / "latest").write_text(step.name)
        older = f"{step} is a training checkpoint written by an older version, without the layout-free weights"
        with pytest.raises(CheckpointError, match=older):
            convert.mttt_to_hf(tmp_path / "run", tmp_path / "hf", groups)
        shutil.rmtree(step)
        with pytest.raises(CheckpointError, match="does not exist"):
            convert.mttt_to_hf(tmp_path / "run", tmp_path / "hf", groups)

    def test_tensor_parallel_is_refused_where_one_directory_is_written(self, tmp_path, capsys):
        from megatron_ttt.cli import main

        assert main(["convert", "mttt-to-hf", str(tmp_path / "run"), str(tmp_path / "hf"), "--tensor-parallel", "2"]) == 2
        assert "only mttt-to-mttt runs at TP > 1 (mttt-to-hf writes one consolidated directory" in capsys.readouterr().err
