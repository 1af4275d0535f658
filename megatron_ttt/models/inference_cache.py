"""The state a model carries between calls at inference: fixed size for TTT and sliding-window
layers, whatever the prefix; growing with it for full-attention layers.

One `BlockCache` per layer holds this rank's share (its local heads) of:
- a TTT layer's inner state (ops.state.TTTState: weights at the current mini-batch's start and
  the gradient sum inside it, with the position in the mini-batch, which is also the RoPE position);
- an attention layer's keys (rotated) and values: all so far, or a window layer's last
  attention_window - 1;
- a LaCT layer's window of keys and values as an attention layer's, and its fast weights
  (`FastWeights`: the weights, their momentum, their rows' target norms, and the current chunk's
  keys, values, lrs and momentum until it completes: at most lact_chunk_size - 1 tokens, in a
  buffer of fixed size);
- the last `conv_kernel - 1` inputs of each causal convolution (the block's pre-conv, and the
  mixer's conv over p that makes q and k in the Mamba backbone).
A fresh cache equals an empty prefix: zero convolution history and the learnable initial weights.
A model that resets at documents also keeps where each sequence stands in its document, and its
attention layers each key's document, so an EOS (in a prompt or generated) restarts every layer.
"""

from dataclasses import dataclass, field

import torch

from megatron_ttt.models.packing import DocumentCursor
from megatron_ttt.ops import TTTState


@dataclass
class FastWeights:
    """A LaCT layer's fast-weight state over its rows [N = B x fast heads, ...]."""

    weights: tuple[torch.Tensor, ...]
    """w0, w1, w2 after the completed chunks (of the current document)."""
    velocity: tuple[torch.Tensor, ...]
    """Their momentum (() without it)."""
    norms: tuple[torch.Tensor, ...]
    """[N, rows, 1] per weight: its rows' norms in the initial weights, which every update restores."""
    chunk: dict[str, torch.Tensor]
    """The current chunk's per-token inputs by name (k, v, lr0, lr1, lr2[, momentum]), each
    [N, lact_chunk_size, width]: its first `filled` tokens are this chunk's."""
    filled: torch.Tensor
    """[N] int64: tokens of the current chunk seen so far (below lact_chunk_size)."""

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights, *self.velocity, *self.norms, *self.chunk.values(), self.filled]


@dataclass
class MixerCache:
    ttt: TTTState | None = None
    """The inner state after the tokens seen so far; None before the first token."""
    conv: torch.Tensor | None = None
    """[K-1, B, C] last inputs of the q/k convolutions (Mamba backbone); None before the first token."""
    keys: torch.Tensor | None = None
    """Attention layers: [B, Hkv, S, d] the keys attended to next (RoPE applied); None before the first token."""
    values: torch.Tensor | None = None
    """Attention layers: [B, Hkv, S, d] their values."""
    segments: torch.Tensor | None = None
    """Attention layers of a model that resets at documents: [B, S] the keys' documents."""
    tokens: int = 0
    """Attention and LaCT layers: tokens seen so far (the RoPE position of the next one)."""
    fast: FastWeights | None = None
    """LaCT layers: the fast weights after the tokens seen so far; None before the first token."""


@dataclass
class BlockCache:
    mixer: MixerCache = field(default_factory=MixerCache)
    """The mixer's state."""
    pre_conv: torch.Tensor | None = None
    """[K-1, B, D] last normed inputs of the pre-conv (Mamba backbone); None before the first token."""


@dataclass
class InferenceCache:
    """Passed to TTTLanguageModel.forward(tokens, cache=...), which updates it in place."""

    blocks: list[BlockCache]
    """One per layer, in order."""
    position: int = 0
    """Tokens consumed so far (the absolute position of the next token)."""
    documents: DocumentCursor | None = None
    """A model that resets at documents: where each sequence stands in its current document."""

    @classmethod
    def empty(cls, num_layers: int) -> "InferenceCache":
        return cls([BlockCache() for _ in range(num_layers)])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (to measure its size)."""
        out = []
        for block in self.blocks:
            mixer = block.mixer
            if mixer.ttt is not None:
                out += list(mixer.ttt.weights) + list(mixer.ttt.grads or ())
            out += mixer.fast.tensors() if mixer.fast is not None else []
            out += [t for t in (mixer.conv, mixer.keys, mixer.values, mixer.segments, block.pre_conv)
                    if t is not None]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
