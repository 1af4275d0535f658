"""The TTT inner loop over [B,H,T,d] tensors: the dispatching entry point, dual form (fast), primal
form (the twin), decode step."""

from megatron_ttt.ops.decode import ttt_decode_step
from megatron_ttt.ops.documents import DocumentStarts
from megatron_ttt.ops.dispatch import ttt_inner_loop
from megatron_ttt.ops.dual import ttt_dual
from megatron_ttt.ops.inputs import TTTInputs
from megatron_ttt.ops.primal import ttt_primal
from megatron_ttt.ops.state import TTTState

__all__ = ["DocumentStarts", "TTTInputs", "TTTState", "ttt_decode_step", "ttt_dual", "ttt_inner_loop", "ttt_primal"]
