"""Decoding one token per call through one compiled graph of the whole model.

A decode step of a small model is hundreds of small ops (every layer's projections, convolution
histories, RoPE, inner step, norms, MLP, and the head), so eager it is bound by per-op dispatch
on a CPU and by kernel launches on a GPU. Here the cache lives in fixed-shape buffers: the TTT
states hold a tensor position and a gradient sum at every position (TTTState.fixed_shape), so the
same graph serves every token, and the step writes the new state into the same buffers (what a
CUDA graph needs: inputs and state at fixed addresses; `mode="reduce-overhead"` on a GPU).

The model code is the eager cached path (TTTLanguageModel.last_logits with an InferenceCache),
traced as is: the eager decode step is the twin this is compared with, token by token.
"""

import functools

import torch

from megatron_ttt.models.inference_cache import BlockCache, InferenceCache, MixerCache
from megatron_ttt.models.mixer import TTTMixer
from megatron_ttt.ops import TTTState


class CompiledDecoder:
    """Continues a prefilled InferenceCache one token per call: `decoder(tokens [B, 1])` returns
    the next logits [B, V/tp] and moves the state, as `model.last_logits(tokens, cache)` would.

    Args:
        model: a TTTLanguageModel of TTT layers only (attention caches grow), at TP 1.
        cache: the cache after the prompt (model.last_logits(prompt, cache)); it is copied, not moved.
        compile: False runs the same fixed-shape step eagerly.
        mode: torch.compile's mode ("reduce-overhead" captures a CUDA graph on a GPU).
    """

    def __init__(self, model, cache: InferenceCache, compile: bool = True, mode: str | None = None):
        _check_decodable(model, cache)
        self.model = model
        self.position = cache.position
        """Tokens consumed so far."""
        self._buffers = _buffers(cache)
        self._step = compiled_step(mode) if compile else _decode_token

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"a decode step takes one token per sequence, [B, 1]; got shape {tuple(tokens.shape)}")
        batch = self._buffers[0][2].weights[0].shape[0]
        if tokens.shape[0] != batch:
            raise ValueError(f"the cache holds {batch} sequences, the tokens {tokens.shape[0]}")
        logits = self._step(self.model, tokens, self._buffers)
        self.position += 1
        return logits

    def cache(self) -> InferenceCache:
        """The state as an InferenceCache (a copy), to continue with a prefix in dual form."""
        blocks = []
        for pre_conv, conv, ttt in self._buffers:
            ttt = TTTState(tuple(w.clone() for w in ttt.weights), tuple(g.clone() for g in ttt.grads),
                           ttt.position.clone()).variable_shape()
            blocks.append(BlockCache(MixerCache(ttt=ttt, conv=_clone(conv)), _clone(pre_conv)))
        return InferenceCache(blocks, self.position)


@functools.cache
def compiled_step(mode: str | None = None):
    """`_decode_token` through torch.compile, built on first use and shared by every decoder: one
    graph per model, batch size and dtype, whatever the prefix or the position in the mini-batch.
    fullgraph: a graph break would split the step back into many calls, so it is an error."""
    return torch.compile(_decode_token, fullgraph=True, dynamic=False, mode=mode)


def _decode_token(model, tokens: torch.Tensor, buffers) -> torch.Tensor:
    """One token through the model's cached path, the new state copied into `buffers` in place."""
    cache = InferenceCache([BlockCache(MixerCache(ttt=ttt, conv=conv), pre_conv)
                            for pre_conv, conv, ttt in buffers])
    logits = model.last_logits(tokens, cache)
    for (pre_conv, conv, ttt), block in zip(buffers, cache.blocks):
        new = block.mixer.ttt
        for old, value in zip((*ttt.weights, *ttt.grads), (*new.weights, *new.grads)):
            old.copy_(value)
        for old, value in ((pre_conv, block.pre_conv), (conv, block.mixer.conv)):
            if old is not None:
                old.copy_(value)
    # Every layer has seen the same tokens, so one position serves all.
    buffers[0][2].position.copy_(cache.blocks[0].mixer.ttt.position)
    return logits


def _buffers(cache: InferenceCache) -> list[tuple]:
    """(pre_conv, conv, fixed-shape TTT state) per layer: copies, with one position tensor shared."""
    position = cache.blocks[0].mixer.ttt.fixed_shape().position.clone()
    out = []
    for block in cache.blocks:
        fixed = block.mixer.ttt.fixed_shape()
        ttt = TTTState(tuple(w.clone() for w in fixed.weights), tuple(g.clone() for g in fixed.grads), position)
        out.append((_clone(block.pre_conv), _clone(block.mixer.conv), ttt))
    return out


def _clone(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.clone()


def _check_decodable(model, cache: InferenceCache) -> None:
    kinds = {type(block.mixer).__name__ for block in model.blocks if not isinstance(block.mixer, TTTMixer)}
    if kinds:
        raise ValueError(f"compiled decoding runs TTT layers only (their state has a fixed size); this model also "
                         f"has {sorted(kinds)}: decode it eagerly")
    if model.config.tensor_model_parallel_size != 1:
        raise ValueError(f"compiled decoding runs at tensor_model_parallel_size 1, got "
                         f"{model.config.tensor_model_parallel_size}: decode it eagerly")
    if len(cache.blocks) != len(model.blocks):
        raise ValueError(f"the cache holds {len(cache.blocks)} layers, the model has {len(model.blocks)}")
    if cache.position == 0 or any(block.mixer.ttt is None for block in cache.blocks):
        raise ValueError("compiled decoding continues a prefilled cache: run the prompt first, "
                         "model.last_logits(prompt, cache)")
