"""Named model sizes: the paper's (125m-1.3b), a 7b of ours, and `tiny` for tests and the default run;
hybrid presets: a size with sliding-window attention layers between its TTT layers.

Every preset comes in both layer types and both backbones; `parameter_count` sums the parameter
table's reference shapes, which the tests check against built models.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from math import prod

from megatron_ttt.models.config import TTTModelConfig, pattern_problems
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
BASE_LR = {"linear": 1.0, "mlp": 0.1}


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
PRESETS = (*SIZES, *HYBRIDS)
DEFAULT_WINDOW = TTTModelConfig.attention_window


def shape(name: str) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, ffn) of a preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return SIZES[HYBRIDS[name].size if name in HYBRIDS else name]


def mixer_settings(name: str, layer_pattern: str = "", attention_window: int = 0, num_kv_heads: int = 0) -> dict:
    """The preset's layer pattern, attention window and key/value heads, each replaced by the
    given value where that is set (non-empty, non-zero)."""
    hybrid = HYBRIDS.get(name)
    return {"layer_pattern": layer_pattern or (repeated_pattern(hybrid.motif, name) if hybrid else ""),
            "attention_window": attention_window or (hybrid.window if hybrid else DEFAULT_WINDOW),
            "num_kv_heads": num_kv_heads or (hybrid.kv_heads if hybrid else 0)}


def mixer_problems(name: str, layer_pattern: str, attention_window: int, num_kv_heads: int,
                   key: Callable[[str], str]) -> list[str]:
    """What is wrong with preset `name`'s mixers once the given settings replace its own, each
    field named by `key(field)`."""
    layers, _, heads, _ = shape(name)
    return pattern_problems(**mixer_settings(name, layer_pattern, attention_window, num_kv_heads),
                            num_layers=layers, num_heads=heads, key=key)


def preset(name: str, layer_type: str = "linear", backbone: str = "mamba", **overrides) -> TTTModelConfig:
    """A named size; the paper's inner base lr for the layer type; `overrides` replace fields
    (for example vocab_size to match a tokenizer); an unset (empty, 0) layer_pattern,
    attention_window or num_kv_heads keeps the preset's."""
    layers, hidden, heads, ffn = shape(name)
    mixers = mixer_settings(name, *(overrides.pop(key, unset) for key, unset in
                                    (("layer_pattern", ""), ("attention_window", 0), ("num_kv_heads", 0))))
    config = TTTModelConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=ffn, num_layers=layers,
                            num_heads=heads, layer_type=layer_type, backbone=backbone, ttt_base_lr=BASE_LR[layer_type],
                            **mixers)
    return replace(config, **overrides)


def repeated_pattern(motif: str, name: str) -> str:
    """A layer pattern that repeats `motif` to the depth of preset `name` ("TW" -> "TWTW..." ;
    "T": every layer TTT)."""
    layers = shape(name)[0]
    return (motif * layers)[:layers]


def parameter_count(cfg: TTTModelConfig) -> int:
    """Parameters of the model: the elements of every tensor in the parameter table (a tied head
    has no rule of its own, so it counts once)."""
    return sum(prod(shape) for shape in reference_shapes(cfg).values())
