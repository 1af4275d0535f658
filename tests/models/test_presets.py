"""Presets: the paper's sizes build, and the parameter count (from the parameter table) equals the built model;
the LaCT presets are LaCT's."""

import pytest

from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.presets import HYBRIDS, LACT_PRESETS, SIZES, parameter_count, preset


@pytest.mark.parametrize("name", ["tiny", "125m", "125m-hybrid", *(pytest.param(n, marks=pytest.mark.slow) for n in ("350m", "760m", "1.3b"))])
@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_parameter_count_formula(groups, name, layer_type, backbone):
    cfg = preset(name, layer_type, backbone)
    model = TTTLanguageModel(megatron_config(cfg), cfg, groups)  # allocated only: shapes are what matter
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg)


def test_paper_sizes_are_in_their_class():
    expected = {"125m": 125e6, "350m": 350e6, "760m": 760e6, "1.3b": 1.3e9, "7b": 7e9}
    for name, nominal in expected.items():
        for layer_type in ("linear", "mlp"):
            count = parameter_count(preset(name, layer_type, "mamba", tie_word_embeddings=False))
            assert 0.85 < count / nominal < 1.15, (name, layer_type, count)


def test_preset_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown preset '13b'"):
        preset("13b")
    with pytest.raises(ValueError, match="hidden_size 64 is not divisible by num_heads 5"):
        preset("tiny", num_heads=5)
    assert set(SIZES) >= {"tiny", "125m", "350m", "760m", "1.3b", "7b"}


def test_hybrid_presets_have_their_pattern_and_keep_overrides():
    cfg = preset("125m-hybrid", "mlp")
    assert (cfg.layer_pattern, cfg.attention_window, cfg.num_kv_heads) == ("TW" * 6, 1024, 4)
    assert (cfg.num_layers, cfg.hidden_size) == (12, 768) and cfg.mixers.count("window") == 6
    changed = preset("125m-hybrid", layer_pattern="TTTW" * 3, attention_window=512, num_kv_heads=12)
    assert (changed.layer_pattern, changed.attention_window, changed.num_kv_heads) == ("TTTW" * 3, 512, 12)
    plain = preset("125m", layer_pattern="", attention_window=0, num_kv_heads=0)
    assert (plain.layer_pattern, plain.attention_window, plain.kv_heads) == ("", 4096, 12)
    for name, hybrid in HYBRIDS.items():
        cfg = preset(name)
        assert cfg.kv_heads % 2 == 0 and cfg.num_heads % cfg.kv_heads == 0, name  # splits over TP 2
        assert parameter_count(cfg) < parameter_count(preset(hybrid.size)), name


@pytest.mark.parametrize("name", ["tiny", "125m-lact"])
def test_lact_parameter_count_formula(groups, name):
    cfg = preset(name, "lact", "transformer", lact_fw_rank=0 if name == "tiny" else 32)
    model = TTTLanguageModel(megatron_config(cfg), cfg, groups)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg)


def test_760m_lact_is_lacts_published_config():
    cfg = preset("760m-lact", "lact", "transformer", rope_theta=LACT_PRESETS["760m-lact"].rope_theta,
                 tie_word_embeddings=False)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.lact_heads, cfg.intermediate_size) == (1536, 24, 24, 4,
                                                                                                      4096)
    assert (cfg.attention_window, cfg.lact_fw_rank, cfg.lact_fw_init_gain, cfg.lact_momentum) == (2048, 32, 0.5, True)
    assert 0.95 < parameter_count(cfg) / 760e6 < 1.1
