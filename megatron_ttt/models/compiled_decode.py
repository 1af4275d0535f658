"""Decoding one token per call through one compiled graph of the whole model.

A decode step of a small model is hundreds of small ops (every layer's projections, convolution
histories, RoPE, inner step, norms, MLP, and the head), so eager it is bound by per-op dispatch
on a CPU and by kernel launches on a GPU. Here the cache lives in fixed-shape buffers: the TTT
states hold a tensor position and a gradient sum at every position (TTTState.fixed_shape), so one
graph serves every token, and the step writes the new state into the same buffers (fixed
addresses). On CUDA (`cuda_graph=True`) the compiled step is then captured once as a CUDA graph
and replayed per token from a fixed token buffer: one launch per token instead of one per kernel.

The graph is the eager cached path (TTTLanguageModel.last_logits with an InferenceCache) traced
once to ATen ops (make_fx, the weights as inputs) and compiled by Inductor: no Python runs per
token beyond the call, and no guards are evaluated (torch.compile's guards on the model's
modules cost more than the rest of a tiny model's step). What guards would check the decoder
checks itself: the tokens' shape and dtype; the weights' dtypes and devices pick the graph. The eager
decode step is the twin this is compared with, token by token.
"""

import weakref

import torch
from torch._inductor.compile_fx import compile_fx
from torch.fx.experimental.proxy_tensor import make_fx

from megatron_ttt.models.inference_cache import BlockCache, InferenceCache, MixerCache
from megatron_ttt.models.mixer import TTTMixer
from megatron_ttt.models.packing import DocumentCursor
from megatron_ttt.ops import TTTState

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Per model: its compiled steps (CompiledDecoder._compiled), gone with the model."""


class CompiledDecoder:
    """Continues a prefilled InferenceCache one token per call: `decoder(tokens [B, 1])` returns
    the next logits [B, V/tp] and moves the state, as `model.last_logits(tokens, cache)` would.

    Args:
        model: a TTTLanguageModel of TTT layers only (attention caches grow), at TP 1.
        cache: the cache after the prompt (model.last_logits(prompt, cache)); it is copied, not moved.
        compile: False runs the same fixed-shape step eagerly.
        cuda_graph: capture the compiled step as a CUDA graph (the model on a CUDA device, compile on).

    The decoder holds the model's weight tensors as they are when it is made: changes in place
    (an optimizer step, load_state_dict) are seen, tensors replaced (model.to(...)) are not; make
    a new decoder then.
    """

    def __init__(self, model, cache: InferenceCache, compile: bool = True, cuda_graph: bool = False):
        _check_decodable(model, cache)
        if cuda_graph and not (compile and model.embedding.weight.is_cuda):
            raise ValueError(f"CUDA-graph capture replays the compiled step on a CUDA device; this model is on "
                             f"{model.embedding.weight.device}{'' if compile else ' and compile is off'}")
        self.model, self.compile, self.cuda_graph = model, compile, cuda_graph
        self.position = cache.position
        """Tokens consumed so far."""
        self._layout = tuple((block.pre_conv is not None, block.mixer.conv is not None, len(block.mixer.ttt.weights))
                             for block in cache.blocks)
        self._state = _flat_state(cache)
        self.batch = cache.blocks[0].mixer.ttt.weights[0].shape[0]
        """Sequences decoded side by side."""
        self._params = list(model.parameters())
        self._step = None
        self._graph = None
        """(CUDAGraph, its token buffer, its logits buffer) once captured."""

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape != (self.batch, 1) or tokens.dtype != torch.int64:
            raise ValueError(f"a decode step takes one int64 token per sequence, [{self.batch}, 1]; got "
                             f"{tokens.dtype} of shape {tuple(tokens.shape)}")
        if self.cuda_graph:
            if self._graph is None:
                self._graph = self._capture(tokens)
            graph, static_tokens, static_logits = self._graph
            static_tokens.copy_(tokens)
            graph.replay()
            logits = static_logits.clone()
        elif self.compile:
            if self._step is None:
                self._step = self._compiled(tokens)
            logits = self._step(self._params, tokens, self._state)
        else:
            logits = _decode_token(self.model, tokens, self._state, self._layout)
        self.position += 1
        return logits

    def cache(self) -> InferenceCache:
        """The state as an InferenceCache (a copy), to continue with a prefix in dual form."""
        layers, documents = _unflatten([t.clone() for t in self._state], self._layout)
        blocks = [BlockCache(MixerCache(ttt=ttt.variable_shape(), conv=conv), pre_conv)
                  for pre_conv, conv, ttt in layers]
        return InferenceCache(blocks, self.position, documents)

    def _capture(self, tokens: torch.Tensor) -> tuple:
        """Compile, then capture one step as a CUDA graph over the decoder's own buffers. The warm-up
        (on a side stream, as capture asks) and the capture each run a step on copies of the state,
        which is restored after, so the first replay is the first token."""
        step, saved = self._compiled(tokens), [t.clone() for t in self._state]
        static_tokens = tokens.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(self._params, static_tokens, self._state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = step(self._params, static_tokens, self._state)
        for buffer, value in zip(self._state, saved):
            buffer.copy_(value)
        return graph, static_tokens, static_logits

    def _compiled(self, tokens: torch.Tensor):
        """The step compiled for this model, batch, weights' dtypes and devices, cache layout and
        inner-lr scales (a traced constant): built on first use, shared by every decoder that
        matches (any prefix, any position)."""
        scales = tuple(block.mixer.inner_lr_scale for block in self.model.blocks)
        key = (tokens.shape[0], tuple((p.dtype, p.device) for p in self._params), self._layout, scales)
        steps = _COMPILED.setdefault(self.model, {})
        if key not in steps:
            steps[key] = _compile(self.model, self._layout, self._params, tokens, self._state)
        return steps[key]


class _DecodeStep(torch.nn.Module):
    """The decode step as a module of the model, so functional_call can pass the weights in."""

    def __init__(self, model, layout: tuple):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, tokens: torch.Tensor, state: list[torch.Tensor]) -> torch.Tensor:
        return _decode_token(self.model, tokens, state, self.layout)


def _compile(model, layout: tuple, params: list[torch.Tensor], tokens: torch.Tensor, state: list[torch.Tensor]):
    """Trace the step to ATen ops (on copies of the state: tracing runs it) and compile it."""
    step = _DecodeStep(model, layout)
    names = [name for name, _ in step.named_parameters()]

    def run(weights, tokens, state):
        return torch.func.functional_call(step, dict(zip(names, weights)), (tokens, state))

    graph = make_fx(run)(params, tokens, [t.clone() for t in state])
    return compile_fx(graph, [params, tokens, state])


def _decode_token(model, tokens: torch.Tensor, state: list[torch.Tensor], layout: tuple) -> torch.Tensor:
    """One token through the model's cached path, the new state copied into `state` in place."""
    layers, documents = _unflatten(state, layout)
    cache = InferenceCache([BlockCache(MixerCache(ttt=ttt, conv=conv), pre_conv) for pre_conv, conv, ttt in layers],
                           documents=documents)
    logits = model.last_logits(tokens, cache)
    new = [t for block in cache.blocks for t in _block_tensors(block.pre_conv, block.mixer.conv, block.mixer.ttt)]
    # Every layer has seen the same tokens, so one position serves all.
    new += [cache.blocks[0].mixer.ttt.position, *(cache.documents or ())]
    for old, value in zip(state, new, strict=True):
        old.copy_(value)
    return logits


def _flat_state(cache: InferenceCache) -> list[torch.Tensor]:
    """Copies of the cache's tensors in fixed shape: per layer its pre-conv and conv histories
    (where it has them), TTT weights and gradient sums; then the one position (one per sequence
    in a model that resets at documents) and where each sequence stands in its document."""
    fixed = [block.mixer.ttt.fixed_shape() for block in cache.blocks]
    out = [t.clone() for block, ttt in zip(cache.blocks, fixed) for t in _block_tensors(block.pre_conv, block.mixer.conv,
                                                                                          ttt)]
    return out + [fixed[0].position.clone(), *(t.clone() for t in cache.documents or ())]


def _block_tensors(pre_conv, conv, ttt: TTTState) -> list[torch.Tensor]:
    return [t for t in (pre_conv, conv) if t is not None] + [*ttt.weights, *ttt.grads]


def _unflatten(state: list[torch.Tensor], layout: tuple) -> tuple[list[tuple], DocumentCursor | None]:
    """(pre_conv, conv, TTTState) per layer and the document cursor, views of `state` (the
    inverse of _flat_state)."""
    tensors, layers = iter(state), []
    for has_pre_conv, has_conv, n_weights in layout:
        pre_conv = next(tensors) if has_pre_conv else None
        conv = next(tensors) if has_conv else None
        weights = tuple(next(tensors) for _ in range(n_weights))
        layers.append((pre_conv, conv, weights, tuple(next(tensors) for _ in range(n_weights))))
    position, *cursor = tensors
    layers = [(pre_conv, conv, TTTState(weights, grads, position)) for pre_conv, conv, weights, grads in layers]
    return layers, DocumentCursor(*cursor) if cursor else None


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
