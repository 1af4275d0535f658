"""A config's model section resolved to the model it describes, and the one rule for "the same run".

The layer type fills in an unset backbone; a preset fills in every shape, mixer, norm epsilon,
RoPE base, LaCT chunk and head tying setting left unset (0, empty or None), so
`model.num_kv_heads=8` on the 7b-hybrid preset and no setting at all are the same model, and so
are `model.num_layers=2` on the tiny preset and none. Launch, pretraining, resume and the
layout check all go through `resolved_section` / `resolve_model`; a run directory holds one model,
while everything else (steps, schedule, data, layout) may change when the run continues.
"""

import dataclasses
import math
from collections.abc import Callable

from megatron_ttt.config.sections import ModelSection, PretrainConfig
from megatron_ttt.models.config import TTTModelConfig, lact_problems
from megatron_ttt.models.presets import PRESETS, preset, preset_settings, shared_settings

VOCAB_MULTIPLE = 128
"""A trained model's vocabulary is the tokenizer's rounded up to a multiple of this times TP."""


SAVED_BEFORE_THE_KEY = {"document_boundaries": "carry"}
"""What a run saved before a model key existed trained as (not the key's default for new runs)."""


def resolved_section(section: dict) -> dict:
    """A saved or requested model section (keys a config of an older version lacks take what it
    trained as, else their defaults) with the preset's value of every unset shape, mixer, norm
    epsilon and head tying setting."""
    values = dataclasses.asdict(ModelSection()) | SAVED_BEFORE_THE_KEY | section
    values["backbone"] = values["backbone"] or layer_type_backbone(values["layer_type"])
    if values["preset"] not in PRESETS:
        return values
    return values | preset_settings(values["preset"], values) | shared_settings(values)


def layer_type_backbone(layer_type: str) -> str:
    """The backbone an unset model.backbone means: LaCT's layer has only the transformer one; the
    TTT layers default to the paper's main models' mamba (every run saved before the key was unset)."""
    return "transformer" if layer_type == "lact" else "mamba"


def lact_section_problems(section: dict, key: Callable[[str], str]) -> list[str]:
    """What is wrong with a LaCT model's heads, chunk and backbone once resolved, each field named
    by `key(field)` ("model.lact_heads" in a config, "--lact-heads" to `mttt plan`); [] for other
    layer types."""
    if section["layer_type"] != "lact":
        return []
    values = resolved_section(section)
    return lact_problems(values["hidden_size"], values["num_heads"], values["lact_heads"], values["lact_chunk_size"],
                         values["backbone"], key=key)


def resolve_model(section: ModelSection, vocab_size: int) -> TTTModelConfig:
    """The model a config's section describes, with the given (padded) vocabulary."""
    values = resolved_section(dataclasses.asdict(section))
    return preset(values.pop("preset"), values.pop("layer_type"), values.pop("backbone"), vocab_size=vocab_size,
                  **values)


def padded_vocab(tokenizer_vocab: int, tensor_parallel: int) -> int:
    """The tokenizer's vocabulary rounded up so that every TP rank holds a multiple of VOCAB_MULTIPLE."""
    multiple = VOCAB_MULTIPLE * tensor_parallel
    return math.ceil(tokenizer_vocab / multiple) * multiple


def trained_model(config: PretrainConfig, tokenizer_vocab: int, eos_id: int | None = None,
                  vocab: int | None = None) -> TTTModelConfig:
    """The model a pretraining run trains. eos_id: the tokenizer's EOS, which ends each packed
    document (None: the model's default, where only its shape matters); vocab: a resumed
    checkpoint's padded vocabulary, kept as it is."""
    model = resolve_model(config.model, vocab or padded_vocab(tokenizer_vocab, config.parallel.tensor_parallel))
    if eos_id is None:
        return model
    if eos_id < 0 and model.document_boundaries == "reset":
        raise ValueError("model.document_boundaries=reset finds documents by the tokenizer's EOS, and this "
                         "tokenizer has none: train one with an EOS piece, or set model.document_boundaries=carry")
    return dataclasses.replace(model, eos_token_id=eos_id)


def model_differences(saved: dict, requested: dict) -> list[str]:
    """How two configs' (dicts) models differ, key by key after resolution; [] for the same model."""
    old, new = resolved_section(saved["model"]), resolved_section(requested["model"])
    return [f"model.{key}: {old.get(key)!r} there, {value!r} now" for key, value in new.items()
            if old.get(key) != value]
