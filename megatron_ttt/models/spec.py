"""ModuleSpecs of the blocks: which megatron-core layers build each part, per layer kind."""

from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ttt.models.attention import AttentionMixer
from megatron_ttt.models.block import SwiGLUMLP, TTTBlock, TTTBlockSubmodules
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.lact_mixer import LaCTMixer
from megatron_ttt.models.layers import ProjectionSubmodules, RowParallelLinear
from megatron_ttt.models.mixer import TTTLinearMixer, TTTMLPMixer

MIXERS = {"linear": TTTLinearMixer, "mlp": TTTMLPMixer, "lact": LaCTMixer}


def mixer_spec(ttt: TTTModelConfig, kind: str) -> ModuleSpec:
    """The mixer of a layer of `kind` (TTTModelConfig.mixers): a TTT mixer (LaCT's layer for
    layer_type lact) or causal attention."""
    if kind == "ttt":
        return ModuleSpec(module=MIXERS[ttt.layer_type],
                          submodules=ProjectionSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    window = ttt.attention_window if kind == "window" else None
    return ModuleSpec(module=AttentionMixer, params={"window": window},
                      submodules=ProjectionSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))


def block_spec(ttt: TTTModelConfig, kind: str = "ttt") -> ModuleSpec:
    mlp = ModuleSpec(module=SwiGLUMLP, submodules=ProjectionSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    return ModuleSpec(module=TTTBlock, submodules=TTTBlockSubmodules(mixer=mixer_spec(ttt, kind), mlp=mlp))
