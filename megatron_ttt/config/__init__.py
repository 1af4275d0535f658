"""Run configuration: small typed sections, YAML files and dotted overrides."""

from megatron_ttt.config.loading import load_config, to_dict
from megatron_ttt.config.sections import PretrainConfig

__all__ = ["PretrainConfig", "load_config", "to_dict"]
