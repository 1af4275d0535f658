"""Reference-format import/export: round trips, clear errors, the self-check, and logprobs."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import megatron_ttt.checkpoint.convert as convert
from megatron_ttt.checkpoint.model_dir import CheckpointError, load_model, save_model
from megatron_ttt.models.parameters import ReferenceFormatError
from megatron_ttt.checkpoint.reference_io import read_reference, write_reference
from megatron_ttt.cli import main
from megatron_ttt.models.build import build_model
from tests.models.tp_cases import TINY, case_model
from tests.models.weights import random_reference_weights

pytestmark = pytest.mark.usefixtures("single_process_parallel")


def reference_dir(path, cfg, weights=None):
    write_reference(path, cfg, weights if weights is not None else random_reference_weights(cfg, dtype=torch.float32))
    return path


@pytest.mark.parametrize("layer_type, backbone, tied", [("linear", "transformer", True), ("mlp", "mamba", True),
                                                        ("linear", "mamba", False)])
def test_round_trip_is_the_identity(tmp_path, layer_type, backbone, tied, groups):
    cfg = replace(TINY, layer_type=layer_type, backbone=backbone, tie_word_embeddings=tied)
    src = reference_dir(tmp_path / "ref", cfg)
    assert convert.hf_to_mttt(src, tmp_path / "ours", groups) <= convert.CHECK_TOLERANCE
    assert convert.mttt_to_hf(tmp_path / "ours", tmp_path / "back", groups) <= convert.CHECK_TOLERANCE
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys() and ("lm_head.weight" in after) == (not tied)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((src / "config.json").read_text())


def test_pytorch_bin_and_bf16_weights_import(tmp_path, groups):
    weights = {n: t.bfloat16() for n, t in random_reference_weights(TINY, dtype=torch.float32).items()}
    src = reference_dir(tmp_path / "ref", TINY, weights)
    (src / "model.safetensors").unlink()
    torch.save(weights, src / "pytorch_model.bin")
    convert.hf_to_mttt(src, tmp_path / "ours", groups)
    model = load_model(tmp_path / "ours", groups)
    assert torch.equal(model.embedding.weight, weights["model.embed_tokens.weight"].float())


def broken(tmp_path, edit):
    src = reference_dir(tmp_path / "ref", TINY)
    weights = load_file(src / "model.safetensors")
    edit(weights)
    save_file(weights, src / "model.safetensors")
    return src


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("model.layers.1.seq_modeling_block.W1"), r"missing: model\.layers\.1\.seq_modeling_block\.W1"),
    (lambda w: w.update({"model.layers.0.extra.weight": torch.zeros(2)}), r"unexpected: model\.layers\.0\.extra\.weight"),
    (lambda w: w.update({"model.norm.weight": torch.zeros(31)}), r"wrong shape: model\.norm\.weight \(31,\) \(expected \(32,\)\)"),
])
def test_bad_weights_are_named_and_nothing_is_written(tmp_path, edit, message, groups):
    src = broken(tmp_path, edit)
    with pytest.raises(ReferenceFormatError, match=message):
        convert.hf_to_mttt(src, tmp_path / "ours", groups)
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("key, value, message", [
    ("ttt_layer_type", "attention", "ttt_layer_type 'attention' is not supported"),
    ("model_type", "llama", "model_type is 'llama', expected 'ttt'"),
    ("use_gate", False, "only the two backbones are supported"),
])
def test_unsupported_configs_are_refused(tmp_path, key, value, message):
    src = reference_dir(tmp_path / "ref", replace(TINY, backbone="mamba"))
    config = json.loads((src / "config.json").read_text()) | {key: value}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReferenceFormatError, match=message):
        read_reference(src)


def test_self_check_catches_a_corrupted_tensor(tmp_path, monkeypatch, groups):
    src = reference_dir(tmp_path / "ref", TINY)
    real = convert.to_local

    def corrupting(*args, **kwargs):
        local = real(*args, **kwargs)
        local["blocks.1.mixer.W1"] = local["blocks.1.mixer.W1"] * 50
        return local

    monkeypatch.setattr(convert, "to_local", corrupting)
    with pytest.raises(CheckpointError, match="log-probabilities differ from the source's by .*nothing was written"):
        convert.hf_to_mttt(src, tmp_path / "ours", groups)
    assert not (tmp_path / "ours").exists()


def test_logprobs_command_matches_the_reference(tmp_path, capsys, groups):
    weights = random_reference_weights(TINY, dtype=torch.float32)
    convert.hf_to_mttt(reference_dir(tmp_path / "ref", TINY, weights), tmp_path / "ours", groups)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (5, 37))
    np.save(tmp_path / "ids.npy", ids)
    args = ["eval", "logprobs", "--checkpoint", str(tmp_path / "ours"), "--input", str(tmp_path / "ids.npy"),
            "--output", str(tmp_path / "lp.npy"), "--batch-size", "2"]
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import destroy_parallel, init_parallel

    destroy_parallel()  # the command sets up (and tears down) its own process group
    try:
        assert main(args) == 0
        lp = np.load(tmp_path / "lp.npy")
        assert lp.dtype == np.float32 and lp.shape == (5, 36)
        expected = convert.reference_logprobs(weights, TINY, torch.from_numpy(ids))
        np.testing.assert_allclose(lp, expected.numpy(), atol=1e-5)
        np.save(tmp_path / "bad.npy", ids + TINY.vocab_size)
        assert main(args[:4] + ["--input", str(tmp_path / "bad.npy")] + args[6:]) == 2
        assert "outside the model's vocabulary of 64" in capsys.readouterr().err
    finally:
        init_parallel(ParallelLayout())


@pytest.mark.parametrize("cfg, refusal", [
    (replace(TINY, num_layers=3, layer_pattern="T*W", attention_window=5),
     r"no attention layers.*at layers \[1, 2\]; nothing was written"),
    (case_model(TINY, {"layer_type": "lact", "backbone": "transformer"}),
     r"no LaCT layers \(layer_type lact\); nothing was written"),
], ids=["hybrid", "lact"])
def test_a_hybrid_or_lact_model_converts_between_our_formats_and_the_reference_format_refuses_it(tmp_path, groups,
                                                                                                 cfg, refusal):
    save_model(build_model(cfg, groups, init_seed=0), tmp_path / "hybrid")
    assert convert.mttt_to_mttt(tmp_path / "hybrid", tmp_path / "copy", groups) <= convert.CHECK_TOLERANCE
    assert load_model(tmp_path / "copy", groups).ttt == cfg
    with pytest.raises(ReferenceFormatError, match=refusal):
        convert.mttt_to_hf(tmp_path / "hybrid", tmp_path / "hf", groups)
    assert not (tmp_path / "hf").exists()
