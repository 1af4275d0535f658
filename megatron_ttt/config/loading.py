"""YAML files and `section.key=value` overrides -> a typed PretrainConfig."""

import dataclasses
import typing
from pathlib import Path

import yaml

from megatron_ttt.config.sections import PretrainConfig
from megatron_ttt.errors import UserInputError
from megatron_ttt.ops import BACKENDS


class ConfigError(UserInputError):
    pass


def _convert(value, kind, where: str):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a {kind.__name__}") from None


def _apply(obj, values: dict, where: str):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} is a section; give its keys")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _convert(value, hints[key], f"{where}.{key}"))
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PretrainConfig:
    """Defaults, then the YAML file, then each `dotted.key=value` override, in order."""
    config = PretrainConfig()
    if path is not None:
        try:
            body = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _apply(config, body, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        nested: dict = {}
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
        _apply(config, nested, "override")
    check(config)
    return config


POSITIVE = ("train.steps", "checkpoint.interval", "checkpoint.keep", "logging.interval", "logging.eval_batches",
            "data.seq_len", "data.micro_batch_size", "data.global_batch_tokens", "parallel.tensor_parallel")


def check(config: PretrainConfig) -> None:
    """Values that must be at least 1 (logging.eval_interval may be 0: no validation)."""
    bad = [f"{key}={value}" for key in POSITIVE
           if (value := getattr(getattr(config, key.split(".")[0]), key.split(".")[1])) < 1]
    if config.logging.eval_interval < 0:
        bad.append(f"logging.eval_interval={config.logging.eval_interval}")
    if bad:
        raise ConfigError(f"these must be at least 1 (eval_interval at least 0): {', '.join(bad)}")
    if config.train.inner_loop_backend not in BACKENDS:
        raise ConfigError(f"train.inner_loop_backend={config.train.inner_loop_backend!r} is not one of {BACKENDS}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
