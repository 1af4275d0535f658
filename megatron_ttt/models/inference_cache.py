"""The state a TTT model carries between calls at inference: fixed size, whatever the prefix.

One `BlockCache` per layer holds this rank's share (its local heads) of:
- the TTT inner state (ops.state.TTTState: weights at the current mini-batch's start and the
  gradient sum inside it, with the position in the mini-batch, which is also the RoPE position);
- the last `conv_kernel - 1` inputs of each causal convolution (the block's pre-conv, and the
  mixer's conv over p that makes q and k in the Mamba backbone).
A fresh cache equals an empty prefix: zero convolution history and the learnable initial weights.
"""

from dataclasses import dataclass, field

import torch

from megatron_ttt.ops import TTTState


@dataclass
class MixerCache:
    ttt: TTTState | None = None
    """The inner state after the tokens seen so far; None before the first token."""
    conv: torch.Tensor | None = None
    """[K-1, B, C] last inputs of the q/k convolutions (Mamba backbone); None before the first token."""


@dataclass
class BlockCache:
    mixer: MixerCache = field(default_factory=MixerCache)
    """The TTT mixer's state."""
    pre_conv: torch.Tensor | None = None
    """[K-1, B, D] last normed inputs of the pre-conv (Mamba backbone); None before the first token."""


@dataclass
class InferenceCache:
    """Passed to TTTLanguageModel.forward(tokens, cache=...), which updates it in place."""

    blocks: list[BlockCache]
    """One per layer, in order."""
    position: int = 0
    """Tokens consumed so far (the absolute position of the next token)."""

    @classmethod
    def empty(cls, num_layers: int) -> "InferenceCache":
        return cls([BlockCache() for _ in range(num_layers)])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (to measure its size)."""
        out = []
        for block in self.blocks:
            ttt = block.mixer.ttt
            if ttt is not None:
                out += list(ttt.weights) + list(ttt.grads or ())
            out += [t for t in (block.mixer.conv, block.pre_conv) if t is not None]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
