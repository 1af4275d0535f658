"""YAML files and `section.key=value` overrides -> a typed PretrainConfig."""

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from megatron_ttt.config.model import lact_section_problems, resolve_model, resolved_section
from megatron_ttt.config.sections import DECAY_SHAPES, SCHEDULES, DataSection, PretrainConfig
from megatron_ttt.errors import UserInputError
from megatron_ttt.data.blend import PERIOD
from megatron_ttt.models.config import BACKBONES, LAYER_TYPES, inner_widths
from megatron_ttt.models.presets import LACT_PRESETS, PRESETS, SETTINGS, preset_settings, settings_problems
from megatron_ttt.parallel.layout import CONFIG_NAMES, Batch, layout_problems
from megatron_ttt.run_options import BACKENDS, check_time_checkpoint_group, triton_widths_unsupported

MOVED = {"model.time_checkpoint_group": "parallel.time_checkpoint_group"}
"""Keys that moved to another section: named in the error."""


class ConfigError(UserInputError):
    pass


def _convert(value, kind, where: str):
    options = typing.get_args(kind)
    if type(None) in options:  # an optional key: null keeps the preset's
        if value is None:
            return None
        kind = next(option for option in options if option is not type(None))
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


def _override_value(text: str):
    """A command-line value as YAML reads it (numbers, booleans), or as written where it is not
    YAML (a layer pattern starting with `*`, which YAML takes for an alias)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply(obj, values: dict, where: str, prefix: str = ""):
    """Set `values` on the dataclass `obj`; `where` names the source, `prefix` the section."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            hint = f"; it is now {MOVED[dotted]}" if dotted in MOVED else ""
            raise ConfigError(f"{where}: unknown key {dotted!r}{hint} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} is a section; give its keys")
            _apply(current, value, where, f"{dotted}.")
        elif dotted == "data.blend" and isinstance(value, list):
            setattr(obj, key, blend_text(value, f"{where}: {dotted}"))
        else:
            setattr(obj, key, _convert(value, hints[key], f"{where}: {dotted}"))
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
        node[leaf] = _override_value(value)
        _apply(config, nested, "override")
    check(config)
    return config


POSITIVE = ("train.steps", "checkpoint.interval", "checkpoint.keep", "logging.interval", "logging.eval_batches",
            "data.seq_len", "data.micro_batch_size", "data.global_batch_tokens", "parallel.tensor_parallel",
            "parallel.context_parallel", "model.mini_batch_size")
CHOICES = {"model.preset": PRESETS, "model.layer_type": LAYER_TYPES, "model.backbone": ("", *BACKBONES),
           "parallel.zero_stage": (0, 1, 2, 3), "data.verify": ("size", "full"), "train.dtype": ("fp32", "bf16"),
           "train.inner_loop_backend": BACKENDS, "train.compile_backend": ("inductor", "aot_eager"),
           "optimizer.schedule": SCHEDULES, "optimizer.decay_shape": DECAY_SHAPES, "optimizer.name": ("adamw", "muon")}


def _get(config: PretrainConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def check(config: PretrainConfig) -> None:
    """Every value on its own; ConfigError naming each key that is wrong."""
    bad = [f"{key}={_get(config, key)} (must be at least 1)" for key in POSITIVE if _get(config, key) < 1]
    if config.logging.eval_interval < 0:
        bad.append(f"logging.eval_interval={config.logging.eval_interval} (must be at least 0: 0 is never)")
    if not 0 <= config.optimizer.muon_momentum < 1:
        bad.append(f"optimizer.muon_momentum={config.optimizer.muon_momentum} (must be in [0, 1))")
    bad += [f"{key}={_get(config, key)!r} (choose one of {', '.join(map(str, choices))})"
            for key, choices in CHOICES.items() if _get(config, key) not in choices]
    try:
        check_time_checkpoint_group(config.parallel.time_checkpoint_group)
    except ValueError as exc:
        bad.append(f"parallel.{exc}")
    if config.model.rope_theta < 0:
        bad.append(f"model.rope_theta={config.model.rope_theta} (must be at least 0: 0 is the preset's)")
    if config.model.lact_chunk_size < 0:
        bad.append(f"model.lact_chunk_size={config.model.lact_chunk_size} (must be at least 0: 0 is the preset's)")
    if config.model.rms_norm_eps < 0:
        bad.append(f"model.rms_norm_eps={config.model.rms_norm_eps} (must be at least 0: 0 is the preset's)")
    if config.train.init_optimizer and not config.train.init_from:
        bad.append("train.init_optimizer=true (takes the optimizer state of train.init_from, which is not set)")
    if config.model.preset in PRESETS:
        bad += _model_problems(config)
    bad += _schedule_problems(config.optimizer)
    if bad:
        raise ConfigError("; ".join(bad))
    blend_entries(config.data)


def _model_problems(config: PretrainConfig) -> list[str]:
    """The preset's shape and mixers with the section's settings, and the backend that must run them."""
    problems = settings_problems(config.model.preset, _model_settings(config), key=lambda field: f"model.{field}")
    problems += _lact_problems(config)
    if not problems and config.train.inner_loop_backend == "triton" and (reason := _kernels_refuse(config)):
        problems.append(f"train.inner_loop_backend=triton: the fused kernels cannot run {reason}; choose auto (the "
                        "PyTorch dual form runs it)")
    return problems


def _lact_problems(config: PretrainConfig) -> list[str]:
    """A LaCT preset without layer_type lact; a lact model's settings (its heads, chunk, backbone)."""
    m = config.model
    if m.preset in LACT_PRESETS and m.layer_type != "lact":
        return [f"model.preset={m.preset} is a LaCT model: set model.layer_type=lact (not {m.layer_type})"]
    return lact_section_problems(dataclasses.asdict(m), key=lambda field: f"model.{field}")


def _schedule_problems(opt) -> list[str]:
    """The schedule's fractions: each of the steps, and warm-up and decay together no more than all."""
    bad = [f"optimizer.{key}={getattr(opt, key)} (must be from 0 to 1)" for key in ("warmup_fraction", "decay_fraction")
           if not 0 <= getattr(opt, key) <= 1]
    if not bad and opt.schedule == "wsd" and opt.warmup_fraction + opt.decay_fraction > 1:
        bad.append(f"optimizer.warmup_fraction={opt.warmup_fraction} + optimizer.decay_fraction={opt.decay_fraction} "
                   "is more than all the steps; a run that starts in the decay sets optimizer.warmup_fraction=0")
    return bad


def _model_settings(config: PretrainConfig) -> dict:
    """The model section's shape and mixer settings as given (0, empty: the preset's)."""
    return {key: getattr(config.model, key) for key in SETTINGS}


def notes(config: PretrainConfig) -> list[str]:
    """What is allowed but probably not meant, one line each (printed once at the start)."""
    if config.model.preset not in PRESETS:
        return []
    values, seq_len = preset_settings(config.model.preset, _model_settings(config)), config.data.seq_len
    found = []
    if "W" in values["layer_pattern"] and values["attention_window"] > seq_len:
        found.append(f"note: model.attention_window={values['attention_window']} is longer than "
                     f"data.seq_len={seq_len}: the W layers never attend further back than {seq_len} tokens in "
                     "training, so evaluating them on longer contexts measures spans they were not trained on; set "
                     "model.attention_window <= data.seq_len unless a later stage trains at a longer data.seq_len")
    if config.model.layer_type == "lact" and (chunk := resolved_section(dataclasses.asdict(config.model))[
            "lact_chunk_size"]) >= seq_len:
        found.append(f"note: model.lact_chunk_size={chunk} is at least data.seq_len={seq_len}: a sample is one chunk, "
                     "so the LaCT layers' fast weights never update in training; set model.lact_chunk_size below "
                     "data.seq_len")
    if config.train.inner_loop_backend == "auto" and (reason := _kernels_refuse(config)):
        found.append(f"note: the fused Triton TTT kernels cannot run this model's head dim ({reason}): on GPUs its "
                     "TTT layers run the PyTorch dual form (train.inner_loop_backend=auto)")
    return found


def _kernels_refuse(config: PretrainConfig) -> str | None:
    """Why the fused kernels cannot run the TTT layers of the config's model (a preset's), or None."""
    values = preset_settings(config.model.preset, _model_settings(config))
    if config.model.layer_type == "lact" or values["layer_pattern"] and "T" not in values["layer_pattern"]:
        return None
    head_dim = values["hidden_size"] // values["num_heads"]
    if reason := triton_widths_unsupported(inner_widths(head_dim, config.model.layer_type)):
        return (f"model.hidden_size / model.num_heads = {values['hidden_size']} / {values['num_heads']} = {head_dim}: "
                f"{reason}")
    return None


def blend_text(items: list, where: str) -> str:
    """data.blend written as a YAML list, each item {manifest: PATH, weight: W} or [W, PATH], as
    the one-line form "W PATH W PATH" (what the config holds and saves)."""
    words = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and set(item) == {"manifest", "weight"}:
            weight, manifest = item["weight"], item["manifest"]
        elif isinstance(item, list) and len(item) == 2:
            weight, manifest = item
        else:
            raise ConfigError(f"{where}: item {i} is {item!r}; give each as {{manifest: PATH, weight: W}} or [W, PATH]")
        if len(str(manifest).split()) != 1:
            raise ConfigError(f"{where}: item {i}: the manifest path {manifest!r} holds spaces; move or link it to a "
                              "path without them")
        words += [str(weight), str(manifest)]
    return " ".join(words)


def blend_entries(data: DataSection) -> list[tuple[float, str]]:
    """data.blend as (weight, manifest) pairs; ConfigError naming the entry that is wrong."""
    words = data.blend.split()
    if len(words) % 2:
        raise ConfigError(f"data.blend={data.blend!r}: give pairs of a weight and a manifest "
                          "(\"0.7 /data/web 0.3 /data/code\")")
    entries = []
    for weight, manifest in zip(words[::2], words[1::2]):
        try:
            value = float(weight)
        except ValueError:
            raise ConfigError(f"data.blend: {weight!r} (before {manifest}) is not a weight") from None
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"data.blend: the weight of {manifest} is {weight}; weights must be positive numbers")
        entries.append((value, manifest))
    places = [_manifest_dir(m) for _, m in entries]
    repeated = sorted({m for m, place in zip((m for _, m in entries), places) if places.count(place) > 1})
    if repeated:
        raise ConfigError(f"data.blend names the same manifest more than once ({', '.join(repeated)}); give each "
                          "manifest once, with the sum of its weights")
    total = sum(w for w, _ in entries)
    if small := [m for w, m in entries if w < total / PERIOD]:  # less than one position per period
        raise ConfigError(f"data.blend: the weight of {', '.join(small)} is below 1/{PERIOD} of the sum of the "
                          "weights, too small to schedule")
    if entries and data.manifest != "bundled":
        raise ConfigError(f"data.blend and data.manifest={data.manifest} are both set; a blend lists every "
                          "manifest it trains on")
    return entries


def _manifest_dir(manifest: str) -> Path:
    """The directory a manifest argument names (its manifest.json or the directory itself)."""
    path = Path(manifest).expanduser().resolve()
    return path.parent if path.name == "manifest.json" else path


def check_world_size(config: PretrainConfig, world_size: int) -> None:
    """What the config asks of `world_size` processes (parallel/layout.py): TP x CP dividing them
    and the model's heads, the sequence splitting over CP (and TP under sequence parallel), and a
    global batch that is a whole number of micro-batches over the data-parallel ranks. Checked
    before any process group is built."""
    m, data = config.model, config.data
    model = resolve_model(m, vocab_size=1) if m.preset in PRESETS else None  # the vocabulary is padded to fit TP
    given = "".join(f", model.{key}={value}" for key, value in _model_settings(config).items()
                    if value and key in ("num_heads", "ffn_hidden_size", "num_kv_heads"))
    names = dataclasses.replace(CONFIG_NAMES, model=f" of model.preset={m.preset}{given}")
    problems = layout_problems(config.layout(world_size), model,
                               Batch(data.seq_len, data.micro_batch_size, data.global_batch_tokens), names,
                               check_vocab=False)
    if problems:
        raise ConfigError("; ".join(problems))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
