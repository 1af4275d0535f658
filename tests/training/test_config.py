"""Configs: YAML + overrides with types checked, and the generated reference in the docs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ttt.config import PretrainConfig, load_config, to_dict
from megatron_ttt.config.continuation import model_section
from megatron_ttt.config.loading import ConfigError, check_world_size, notes
from megatron_ttt.config.model import resolve_model
from megatron_ttt.config.reference import markdown
from megatron_ttt.run_options import InnerLoopOptions


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  layer_type: mlp\ntrain:\n  steps: 50\n")
    config = load_config(path, ["train.steps=7", "parallel.sequence_parallel=true", "optimizer.lr=1e-4"])
    assert (config.model.layer_type, config.train.steps, config.parallel.sequence_parallel, config.optimizer.lr) == \
        ("mlp", 7, True, 1e-4)


@pytest.mark.parametrize("override, message", [
    ("train.stepz=5", "unknown key 'train.stepz'"),
    ("model.time_checkpoint_group=4",
     "unknown key 'model.time_checkpoint_group'; it is now parallel.time_checkpoint_group"),
    ("train.steps=many", "override: train.steps: 'many' is not a int"),
    ("parallel.sequence_parallel=maybe", "is not a boolean"),
    ("train", "not of the form section.key=value"),
    ("model=3", "is a section"),
    ("checkpoint.interval=0", r"checkpoint.interval=0 \(must be at least 1\)"),
    ("logging.eval_batches=0", r"logging.eval_batches=0"),
    ("model.preset=7x", r"model.preset='7x' \(choose one of tiny, 125m"),
    ("model.layer_type=conv", r"model.layer_type='conv'"),
    ("model.layer_pattern=TX", r"model.layer_pattern 'TX' has unknown symbols \['X'\]"),
    ("model.layer_pattern=*W*", r"model.layer_pattern '\*W\*' has 3 symbols for 2 layers"),
    ("model.attention_window=-1", r"model.attention_window -1 must be at least 1"),
    ("model.num_kv_heads=3", r"model.num_kv_heads 3 must divide model.num_heads 4"),
    ("model.hidden_size=90", r"model.hidden_size 90 is not divisible by model.num_heads 4"),
    ("model.num_heads=-2", r"model.num_heads -2 must be at least 0 \(0: the preset's\)"),
    ("model.hidden_size=12", r"the head dim model.hidden_size / model.num_heads = 3 must be even for RoPE"),
    ("parallel.zero_stage=4", r"parallel.zero_stage=4"),
    ("train.dtype=fp16", r"train.dtype='fp16'"),
    ("data.verify=fast", r"data.verify='fast' \(choose one of size, full\)"),
    ("train.inner_loop_backend=cuda", r"train.inner_loop_backend='cuda'"),
    ("parallel.time_checkpoint_group=-1", r"parallel.time_checkpoint_group must be an integer >= 0"),
    ("model.rope_theta=-1", r"model.rope_theta=-1.0 \(must be at least 0: 0 is the preset's\)"),
    ("model.rms_norm_eps=-1e-5", r"model.rms_norm_eps=-1e-05 \(must be at least 0: 0 is the preset's\)"),
    ("model.tie_word_embeddings=maybe", r"model.tie_word_embeddings: 'maybe' is not a boolean"),
    ("train.init_optimizer=true", r"train.init_optimizer=true \(takes the optimizer state of train.init_from, which "
                                  r"is not set\)"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.tensor_parallel=3"], 1, r"parallel.tensor_parallel=3 x parallel.context_parallel=1 does not divide "
                                        r"the 1 processes"),
    (["parallel.context_parallel=2", "parallel.tensor_parallel=2"], 2,
     r"parallel.tensor_parallel=2 x parallel.context_parallel=2 does not divide the 2 processes"),
    (["parallel.context_parallel=3", "model.preset=125m", "data.seq_len=100"], 3,
     r"data.seq_len=100 does not split over parallel.context_parallel=3;"),
    (["parallel.context_parallel=2", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
      "data.seq_len=258"], 4, r"data.seq_len=258 does not split over parallel.context_parallel=2 x "
                              r"parallel.tensor_parallel=2 \(sequence parallel\)"),
    (["parallel.context_parallel=8"], 8, r"parallel.tensor_parallel=1 x parallel.context_parallel=8 does not "
                                         r"divide the 4 heads of model.preset=tiny"),
    (["model.preset=7b-hybrid", "parallel.tensor_parallel=16"], 16,
     r"parallel.tensor_parallel=16 does not divide the 8 key/value heads of model.preset=7b-hybrid"),
    (["parallel.tensor_parallel=3", "model.preset=125m"], 3,
     r"parallel.tensor_parallel=3 does not divide the MLP width 2048 of model.preset=125m"),
    (["parallel.tensor_parallel=4", "model.num_heads=2", "model.hidden_size=32"], 4,
     r"parallel.tensor_parallel=4 x parallel.context_parallel=1 does not divide the 2 heads of model.preset=tiny, "
     r"model.num_heads=2"),
    (["model.layer_type=lact", "model.lact_heads=2", "parallel.tensor_parallel=4"], 4,
     r"parallel.tensor_parallel=4 x parallel.context_parallel=1 does not divide the 2 fast-weight heads "
     r"\(lact_heads\) of model.preset=tiny"),
    (["parallel.tensor_parallel=2", "data.global_batch_tokens=1024"], 8,
     r"data.global_batch_tokens=1024 is not a multiple of .* = 4 x 4 x 256 = 4096"),
])
def test_world_size_checks_name_the_keys(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        check_world_size(load_config(None, overrides), world)


@pytest.mark.parametrize("overrides, message", [
    (["model.num_layers=3", "model.layer_pattern=TW"], r"model.layer_pattern 'TW' has 2 symbols for 3 layers"),
    (["model.preset=125m-hybrid", "model.num_heads=6", "model.hidden_size=384"],
     r"model.num_kv_heads 4 must divide model.num_heads 6"),
    (["model.hidden_size=96", "train.inner_loop_backend=triton"],
     r"train.inner_loop_backend=triton: the fused kernels cannot run model.hidden_size / model.num_heads = 96 / 4 = "
     r"24: the inner widths \[24, 24\] are not all powers of two >= 16"),
    (["optimizer.schedule=wsd", "optimizer.decay_fraction=0.95"],
     r"optimizer.warmup_fraction=0.1 \+ optimizer.decay_fraction=0.95 is more than all the steps"),
    (["model.layer_type=lact", "model.backbone=mamba"],
     r"model.layer_type lact is LaCT's transformer layer \(no convolutions, no gate\): model.backbone must be "
     r"transformer, not 'mamba'"),
    (["model.layer_type=lact", "model.lact_heads=3"],
     r"model.lact_heads 3 must divide model.hidden_size 64 and model.num_heads 4"),
    (["model.preset=760m-lact"], r"model.preset=760m-lact is a LaCT model: set model.layer_type=lact \(not linear\)"),
    (["optimizer.decay_shape=exponential"], r"optimizer.decay_shape='exponential' \(choose one of linear, cosine, "
                                            r"1-sqrt\)"),
])
def test_bad_shapes_and_schedules_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_hybrid_preset_repeats_its_motif_to_the_depth_given():
    config = load_config(None, ["model.preset=125m-hybrid", "model.num_layers=5"])
    assert resolve_model(config.model, 128).layer_pattern == "TWTWT"


def test_a_head_dim_the_kernels_refuse_is_noted_with_the_backend_that_runs():
    note, = notes(load_config(None, ["model.hidden_size=96"]))
    assert note == ("note: the fused Triton TTT kernels cannot run this model's head dim (model.hidden_size / "
                    "model.num_heads = 96 / 4 = 24: the inner widths [24, 24] are not all powers of two >= 16): on "
                    "GPUs its TTT layers run the PyTorch dual form (train.inner_loop_backend=auto)")
    assert notes(load_config(None, ["model.hidden_size=128"])) == []  # head dim 32
    assert notes(load_config(None, ["model.hidden_size=96", "train.inner_loop_backend=torch"])) == []


def test_world_sizes_that_fit():
    # 2046 = 3 x 682: the MLP splits over TP 3 as the heads do.
    check_world_size(load_config(None, ["parallel.tensor_parallel=3", "model.preset=125m",
                                        "model.ffn_hidden_size=2046"]), 3)
    check_world_size(load_config(None, ["parallel.context_parallel=2", "parallel.tensor_parallel=2",
                                        "parallel.sequence_parallel=true", "data.global_batch_tokens=2048"]), 8)
    check_world_size(load_config(None, ["parallel.tensor_parallel=2", "data.global_batch_tokens=4096"]), 8)


def test_a_window_longer_than_the_sequences_is_noted():
    hybrid = ["model.layer_pattern=TW", "data.seq_len=256"]
    assert notes(load_config(None, hybrid + ["model.attention_window=256"])) == []
    assert notes(load_config(None, ["data.seq_len=256"])) == []  # no W layer: the window is unused
    note, = notes(load_config(None, hybrid))  # the preset's 4096
    assert note.startswith("note: model.attention_window=4096 is longer than data.seq_len=256: the W layers never "
                           "attend further back than 256 tokens in training")


def test_a_lact_chunk_as_long_as_the_samples_is_noted():
    assert notes(load_config(None, ["model.layer_type=lact"])) == []  # tiny's chunk of 64 in 256 tokens
    note, = notes(load_config(None, ["model.layer_type=lact", "model.lact_chunk_size=256"]))
    assert note.startswith("note: model.lact_chunk_size=256 is at least data.seq_len=256: a sample is one chunk, so "
                           "the LaCT layers' fast weights never update in training")


def test_the_layer_type_and_the_preset_settle_backbone_chunk_and_rope_theta():
    tiny_lact = resolve_model(load_config(None, ["model.layer_type=lact"]).model, 128)
    assert (tiny_lact.backbone, tiny_lact.lact_chunk_size, tiny_lact.rope_theta) == ("transformer", 64, 10000.0)
    big = resolve_model(load_config(None, ["model.preset=760m-lact", "model.layer_type=lact"]).model, 128)
    assert (big.backbone, big.lact_chunk_size, big.rope_theta, big.tie_word_embeddings) == ("transformer", 2048, 1e6,
                                                                                           False)
    assert resolve_model(load_config(None, []).model, 128).backbone == "mamba"
    # A model directory's continuation names each with the fewest keys (a LaCT preset for LaCT only).
    assert model_section(tiny_lact) == {"preset": "tiny", "layer_type": "lact"}
    assert model_section(big) == {"preset": "760m-lact", "layer_type": "lact"}


def test_pretrain_config_errors_exit_2_before_any_process_group(tmp_path):
    """A bad value is a one-line error and exit status 2, in a fresh process, within seconds:
    nothing (process group, engine, model, data) was built."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR")}
    for override, message in (("parallel.tensor_parallel=3", "parallel.tensor_parallel=3 x parallel.context_parallel=1"),
                              ("model.preset=7x", "model.preset='7x'")):
        result = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", "pretrain", override,
                                 f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("mttt pretrain: error: ") and message in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_inner_loop_options_come_from_their_keys():
    config = load_config(None, ["train.inner_loop_backend=torch", "parallel.time_checkpoint_group=4"])
    assert config.inner_loop() == InnerLoopOptions("torch", 4)


def test_docs_hold_the_generated_reference():
    text = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == markdown(), \
        "regenerate with: python -m megatron_ttt.config.reference"


def test_a_checkpoint_resumes_when_its_config_spelled_the_presets_defaults():
    from megatron_ttt.training.checkpointing import ResumeError, check_same_model

    older = {"model": to_dict(PretrainConfig())["model"] | {"attention_window": 4096}}  # the default before presets
    check_same_model(older, {"model": to_dict(PretrainConfig())["model"]}, Path("ckpt"))
    hybrid = {"model": to_dict(PretrainConfig())["model"] | {"preset": "125m-hybrid"}}
    check_same_model(hybrid, {"model": hybrid["model"] | {"attention_window": 1024, "layer_pattern": "TW" * 6}},
                     Path("ckpt"))
    with pytest.raises(ResumeError, match=r"another model \(model.attention_window: 1024 there, 512 now\)"):
        check_same_model(hybrid, {"model": hybrid["model"] | {"attention_window": 512}}, Path("ckpt"))
    check_same_model(hybrid, {"model": hybrid["model"] | {"num_layers": 12, "ffn_hidden_size": 2048}}, Path("ckpt"))
    before_the_keys = {"model": {k: v for k, v in hybrid["model"].items()
                                 if k not in ("rms_norm_eps", "tie_word_embeddings")}}
    check_same_model(before_the_keys, {"model": hybrid["model"] | {"rms_norm_eps": 1e-6, "tie_word_embeddings": True}},
                     Path("ckpt"))
    with pytest.raises(ResumeError, match=r"another model \(model.rms_norm_eps: 1e-06 there, 1e-05 now; "
                                          r"model.tie_word_embeddings: True there, False now\)"):
        check_same_model(before_the_keys, {"model": hybrid["model"] | {"rms_norm_eps": 1e-5,
                                                                        "tie_word_embeddings": False}}, Path("ckpt"))
    # Saved before backbone, rope_theta and chunk followed the preset (and before the LaCT keys).
    spelled = {k: v for k, v in to_dict(PretrainConfig())["model"].items() if not k.startswith("lact_")}
    check_same_model({"model": spelled | {"backbone": "mamba", "rope_theta": 10000.0}},
                     {"model": to_dict(PretrainConfig())["model"]}, Path("ckpt"))
    with pytest.raises(ResumeError, match=r"another model \(model.num_layers: 12 there, 6 now; model.layer_pattern: "
                                          r"'TWTWTWTWTWTW' there, 'TWTWTW' now\)"):
        check_same_model(hybrid, {"model": hybrid["model"] | {"num_layers": 6}}, Path("ckpt"))


def test_a_blend_may_be_a_yaml_list(tmp_path):
    config = tmp_path / "blend.yaml"
    config.write_text("data:\n  blend:\n    - {manifest: /d/web, weight: 0.7}\n    - [0.3, /d/code/manifest.json]\n")
    assert load_config(config).data.blend == "0.7 /d/web 0.3 /d/code/manifest.json"
    config.write_text("data:\n  blend:\n    - {manifest: /d/web, weights: 0.7}\n")
    with pytest.raises(ConfigError, match=r"data.blend: item 0 is \{'manifest': '/d/web', 'weights': 0.7\}; give "
                                          r"each as \{manifest: PATH, weight: W\} or \[W, PATH\]"):
        load_config(config)
