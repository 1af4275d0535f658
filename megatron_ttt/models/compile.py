"""Compiled blocks: torch.compile of each block, as torchtitan's apply_compile.

Each block is compiled in place (`nn.Module.compile`: parameter names and checkpoints unchanged)
as one full graph (`fullgraph=True`: a graph break is an error, not a silent split) with static
shapes (`dynamic=False`): training's shapes never change, and scoring pads its batches to fixed
shapes (models/scoring.py). Blocks of one kind share one graph: dynamo treats the modules'
parameters as inputs, so the second layer reuses the first layer's code. Inside the graph the
inner loop is one op (ops/opaque.py), and attention is SDPA's (or FlexAttention's) one op; norms,
gates, convolutions, RoPE, reshapes and the projections' epilogues are what gets fused.
"""

from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce
from torch._dynamo.utils import compilation_time_metrics

from megatron_ttt.models.language_model import TTTLanguageModel

COMPILE_PHASES = ("_compile.compile_inner", "backward._backward_impl")
"""torch._dynamo's timers of a forward graph's compile (tracing and code generation) and of its
backward's, compiled on the first backward."""


def compile_blocks(model: TTTLanguageModel, backend: str = "inductor", fullgraph: bool = True) -> None:
    """Compile every block of `model` in place (the backend: inductor to run fast; the tests use
    aot_eager, which traces the same forward and backward graphs without generating code).
    fullgraph False where the block holds what the compiler cannot trace: ZeRO-3's parameter
    gathering hooks, and under TP megatron-core's linears (an asynchronous all-reduce in their
    backward; on a CPU, the CUDA shim placing sequence-parallel gathers). The graph then breaks
    there and the pieces between are compiled (more graphs, each built once)."""
    # megatron-core's parallel linears warn once per process, from inside their forward, that
    # CUDA_DEVICE_MAX_CONNECTIONS is not 1; a warning cannot be traced, so it counts as given.
    linear_with_grad_accumulation_and_async_allreduce.warned = True
    for block in model.blocks:
        block.compile(fullgraph=fullgraph, dynamic=False, backend=backend)


def compile_seconds() -> float:
    """Seconds this process has spent compiling graphs so far."""
    return sum(sum(compilation_time_metrics.get(phase, ())) for phase in COMPILE_PHASES)
