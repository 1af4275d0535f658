"""Named model sizes: the paper's (125m-1.3b), a 7b of ours, and `tiny` for tests and the default run;
hybrid presets: a size with sliding-window attention layers between its TTT layers; LaCT presets
(layer_type lact): LaCT's layer at the 125m shape and as LaCT's published 760M config.

Every preset comes in both layer types and both backbones; `parameter_count` sums the parameter
table's reference shapes, which the tests check against built models.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from math import prod

from megatron_ttt.models.config import TTTModelConfig, pattern_problems, shape_problems
from megatron_ttt.models.parameter_table import reference_shapes

# name: (layers, hidden, heads, ffn), from the paper's table; 7b: the Llama-2 7B shape with head
# dim 64, as every TTT model uses, where both ops' fused kernels fit an A100 (docs/planning.md).
SIZES = {
    "tiny": (2, 64, 4, 176),
    "125m": (12, 768, 12, 2048),
    "350m": (24, 1024, 16, 2736),
    "760m": (24, 1536, 16, 4096),
    "1.3b": (24, 2048, 32, 5504),
    "7b": (32, 4096, 64, 11008),
}
BASE_LR = {"linear": 1.0, "mlp": 0.1, "lact": 1.0}
"""The paper's inner base lr per layer type (LaCT's lrs come from its own parameterisation: unused)."""


@dataclass(frozen=True)
class Hybrid:
    """A hybrid preset (docs/model.md gives the published configurations each follows)."""

    size: str
    """The SIZES entry whose shape it has."""
    motif: str
    """Repeated to the depth: its layer pattern."""
    window: int
    """The W layers' attention window."""
    kv_heads: int
    """Key/value heads of the attention layers."""


# 125m-hybrid: Samba's 1:1 alternation with a window of half the training context (2048 of 4k
# there, 1024 of the paper's 2k here); 7b-hybrid: the same alternation with TTT-E2E's 8k window
# and Llama-2-70B's 8 key/value heads.
HYBRIDS = {
    "125m-hybrid": Hybrid("125m", "TW", 1024, 4),
    "7b-hybrid": Hybrid("7b", "TW", 8192, 8),
}


@dataclass(frozen=True)
class LaCTPreset:
    """A LaCT preset (docs/model.md gives the published configuration each follows)."""

    shape: tuple[int, int, int, int]
    """(layers, hidden, attention heads, ffn)."""
    window: int
    """The in-layer attention's window."""
    chunk: int
    """lact_chunk_size."""
    rope_theta: float
    tie_word_embeddings: bool


# 760m-lact: LaCT's configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json (hidden 1536, 24 layers,
# 24 attention heads, 4 fast heads, window and chunk 2048, rope_theta 1e6, untied embeddings; its
# fla GatedMLP with hidden_ratio 4 is 4096 wide); 125m-lact: the same layer at the 125m shape.
LACT_PRESETS = {
    "125m-lact": LaCTPreset((12, 768, 12, 2048), 2048, 2048, 10000.0, True),
    "760m-lact": LaCTPreset((24, 1536, 24, 4096), 2048, 2048, 1e6, False),
}
TINY_LACT_CHUNK = 64
"""The tiny preset's LaCT chunk: 4 chunks in its 256-token samples."""
PRESETS = (*SIZES, *HYBRIDS, *LACT_PRESETS)
DEFAULT_WINDOW = TTTModelConfig.attention_window


def shape(name: str) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, ffn) of a preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name in LACT_PRESETS:
        return LACT_PRESETS[name].shape
    return SIZES[HYBRIDS[name].size if name in HYBRIDS else name]


SHAPE_KEYS = ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size")
"""A preset's shape as a config names it: 0 keeps the preset's value."""
MIXER_KEYS = ("layer_pattern", "attention_window", "num_kv_heads")
"""A preset's mixers as a config names them: empty or 0 keeps the preset's value."""
SETTINGS = (*SHAPE_KEYS, *MIXER_KEYS)
SHARED_KEYS = ("rms_norm_eps", "tie_word_embeddings", "rope_theta", "lact_chunk_size")
"""Settings that follow the preset or the layer type: a config's 0, "" or None keeps the preset's."""


def preset_settings(name: str, given: dict | None = None) -> dict:
    """Preset `name`'s shape and mixers (the SETTINGS keys), each replaced by the value `given`
    sets (non-zero, non-empty). A hybrid's motif repeats to the depth the settings give."""
    given = given or {}
    shape_values = dict(zip(SHAPE_KEYS, shape(name)))
    values = {key: given.get(key) or value for key, value in shape_values.items()}
    hybrid, lact = HYBRIDS.get(name), LACT_PRESETS.get(name)
    layers = values["num_layers"]
    window = hybrid.window if hybrid else lact.window if lact else DEFAULT_WINDOW
    return values | {
        "layer_pattern": given.get("layer_pattern") or (repeated(hybrid.motif, layers) if hybrid else ""),
        "attention_window": given.get("attention_window") or window,
        "num_kv_heads": given.get("num_kv_heads") or (hybrid.kv_heads if hybrid else 0)}


def shared_settings(given: dict) -> dict:
    """The SHARED_KEYS as `given` (a config's model section) sets them, the preset's where unset
    (0, None)."""
    tied, lact = given.get("tie_word_embeddings"), LACT_PRESETS.get(given.get("preset"))
    tiny_lact = given.get("preset") == "tiny" and given.get("layer_type") == "lact"
    # Only a LaCT model reads its chunk: every other keeps the model config's default, as a
    # converted or older model directory has it.
    chunk = lact.chunk if lact else TINY_LACT_CHUNK if tiny_lact else TTTModelConfig.lact_chunk_size
    return {"rms_norm_eps": given.get("rms_norm_eps") or TTTModelConfig.rms_norm_eps,
            "tie_word_embeddings": (lact.tie_word_embeddings if lact else TTTModelConfig.tie_word_embeddings)
            if tied is None else tied,
            "rope_theta": given.get("rope_theta") or (lact.rope_theta if lact else TTTModelConfig.rope_theta),
            "lact_chunk_size": given.get("lact_chunk_size") or chunk}


def settings_problems(name: str, given: dict, key: Callable[[str], str]) -> list[str]:
    """What is wrong with preset `name` once the `given` settings replace its own, each field
    named by `key(field)` (e.g. "model.num_heads" in a config, "--num-heads" on a command line)."""
    negative = [f"{key(field)} {given[field]} must be at least 0 (0: the preset's)" for field in SHAPE_KEYS
                if given.get(field, 0) < 0]
    if negative:
        return negative
    values = preset_settings(name, given)
    return (shape_problems(values["hidden_size"], values["num_heads"], key)
            + pattern_problems(values["layer_pattern"], values["num_layers"], values["attention_window"],
                               values["num_kv_heads"], values["num_heads"], key))


def preset(name: str, layer_type: str = "linear", backbone: str = "mamba", **overrides) -> TTTModelConfig:
    """A named size; the paper's inner base lr for the layer type; `overrides` replace fields
    (for example vocab_size to match a tokenizer); the SETTINGS keys (ffn_hidden_size is the
    model's intermediate_size) keep the preset's value where unset (0, empty)."""
    values = preset_settings(name, {key: overrides.pop(key) for key in SETTINGS if key in overrides})
    config = TTTModelConfig(vocab_size=32000, hidden_size=values["hidden_size"],
                            intermediate_size=values["ffn_hidden_size"], num_layers=values["num_layers"],
                            num_heads=values["num_heads"], layer_type=layer_type, backbone=backbone,
                            ttt_base_lr=BASE_LR[layer_type],
                            **{key: values[key] for key in MIXER_KEYS})
    return replace(config, **overrides)


def repeated_pattern(motif: str, name: str) -> str:
    """A layer pattern that repeats `motif` to the depth of preset `name` ("TW" -> "TWTW..." ;
    "T": every layer TTT)."""
    return repeated(motif, shape(name)[0])


def repeated(motif: str, layers: int) -> str:
    """`motif` repeated to `layers` symbols."""
    return (motif * layers)[:layers]


def parameter_count(cfg: TTTModelConfig) -> int:
    """Parameters of the model: the elements of every tensor in the parameter table (a tied head
    has no rule of its own, so it counts once)."""
    return sum(prod(shape) for shape in reference_shapes(cfg).values())
