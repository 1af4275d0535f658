"""The config that continues pretraining a converted model (`mttt pretrain train.init_from=DIR`):
the fewest model keys, a preset and what differs from it, that resolve to the model directory's
model, given as command-line overrides and as a YAML fragment written beside the weights.

train.init_from compares the model the config describes with the source's key by key, and a
resumed run resolves its model from its own saved config alone: so the section names every
setting, and nothing is read from the source to fill it in.
"""

import dataclasses
import shlex
from textwrap import wrap
from pathlib import Path

import yaml

from megatron_ttt.atomic import write_atomic
from megatron_ttt.config.model import resolve_model, resolved_section
from megatron_ttt.config.sections import ModelSection
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.presets import LACT_PRESETS, PRESETS

CONTINUE_FILE = "continue.yaml"
"""The fragment in the model directory, for `mttt pretrain --config`."""
MODEL_FIELD = {"ffn_hidden_size": "intermediate_size"}
"""Model section keys whose model config field is named otherwise."""
NOT_IN_THE_SECTION = ("vocab_size", "init_std", "bos_token_id", "eos_token_id")
"""Model config fields a run takes elsewhere: the vocabulary from train.init_from's model, the EOS
from the data's tokenizer; init_std and the BOS id change nothing loaded weights compute."""


def _resolved(section: dict) -> dict:
    """The model a config with this model section (every other key at its default) trains."""
    return resolved_section(dataclasses.asdict(ModelSection(**section)))


def _fewest_keys(model: TTTModelConfig, preset: str) -> dict:
    """Every key set to the model's, then each dropped that the preset or the default gives alike."""
    section = {"preset": preset} | {f.name: getattr(model, MODEL_FIELD.get(f.name, f.name))
                                    for f in dataclasses.fields(ModelSection) if f.name != "preset"}
    for key in list(section)[1:]:
        fewer = {k: v for k, v in section.items() if k != key}
        if _resolved(fewer) == _resolved(section):
            section = fewer
    return section


def _describes(section: dict, model: TTTModelConfig) -> bool:
    try:
        resolved = resolve_model(ModelSection(**section), model.vocab_size)
    except ValueError:  # a preset whose unset settings cannot hold with the model's (kv heads)
        return False
    return resolved == dataclasses.replace(model, **{k: getattr(resolved, k) for k in NOT_IN_THE_SECTION})


def model_section(model: TTTModelConfig) -> dict:
    """The fewest model section keys that describe `model` (the first preset among equals; the LaCT
    presets for LaCT models only, which are all they take)."""
    names = [name for name in PRESETS if (name in LACT_PRESETS) <= (model.layer_type == "lact")]
    fitting = [s for s in (_fewest_keys(model, name) for name in names) if _describes(s, model)]
    if not fitting:
        raise ValueError(f"no model section describes {model}")
    return min(fitting, key=len)


def _override(key: str, value) -> str:
    return f"model.{key}={str(value).lower() if isinstance(value, bool) else value}"


def continue_pretraining(model: TTTModelConfig, directory: Path) -> str:
    """Writes `directory`/continue.yaml (the model section describing `model`, the directory's)
    and returns what to tell the user: the command line that continues pretraining it. The file
    comes after the directory was sealed, outside its checksums: it holds no weights, and loading
    and verifying read only the files the checksums record."""
    section = model_section(model)
    boundaries = (f"model.document_boundaries={model.document_boundaries}: as the converted model computes "
                  "(Llama attends across the documents packed in a sequence, as it was trained and as "
                  "transformers scores it); train.init_from refuses a model section that differs")
    header = wrap(f"The model section of `mttt pretrain train.init_from={directory}`. {boundaries}.", 96)
    write_atomic(directory / CONTINUE_FILE, "".join(f"# {line}\n" for line in header)
                 + yaml.safe_dump({"model": section}, sort_keys=False))
    command = shlex.join(["mttt", "pretrain", f"train.init_from={directory}",
                          *(_override(k, v) for k, v in section.items())])
    fragment = shlex.join(["mttt", "pretrain", "--config", str(directory / CONTINUE_FILE),
                           f"train.init_from={directory}"])
    return (f"continue pretraining it with (adding the data, steps and schedule):\n  {command}\nor, with the same "
            f"model section from {directory / CONTINUE_FILE}:\n  {fragment}\n{boundaries}")
