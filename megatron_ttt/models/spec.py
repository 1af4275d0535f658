"""ModuleSpecs of the TTT block: which megatron-core layers build each part."""

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ttt.models.block import SwiGLUMLP, SwiGLUSubmodules, TTTBlock, TTTBlockSubmodules
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.mixer import TTTLinearMixer, TTTMixerSubmodules, TTTMLPMixer

MIXERS = {"linear": TTTLinearMixer, "mlp": TTTMLPMixer}


def ttt_block_spec(ttt: TTTModelConfig) -> ModuleSpec:
    mixer = ModuleSpec(module=MIXERS[ttt.layer_type],
                       submodules=TTTMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    mlp = ModuleSpec(module=SwiGLUMLP, submodules=SwiGLUSubmodules(fc1=ColumnParallelLinear, fc2=RowParallelLinear))
    return ModuleSpec(module=TTTBlock, submodules=TTTBlockSubmodules(mixer=mixer, mlp=mlp))
