"""LaCT: large-chunk test-time training with SwiGLU fast weights, the fast path.

Shapes follow LaCT's `block_causal_lact_swiglu` (Zhang et al. 2025, lact_llm/lact_model/
ttt_operation.py); N is batch x fast-weight heads, T tokens, C the chunk:

    w0, w2 [N,H,Din], w1 [N,Dout,H]     fast weights, f(x) = w1 (silu(w0 x) * (w2 x))
    q, k [N,T,Din], v [N,T,Dout]         queries, keys, values
    lr0, lr1, lr2 [N,T,1]                per-token learning rates of w0, w1, w2
    momentum [N,T,1] or None             per-token momentum coefficients

Chunk by chunk, apply then update: a chunk's queries read the weights from before its update,
then the weights take one step of the negative dot-product loss -sum_t lr_t <f(k_t), v_t> over
the chunk's keys (each weight with its own lr), optionally through momentum (the chunk's mean
coefficient times the previous step, added) and Muon (the step orthogonalised by Newton-Schulz),
and every row of every weight is scaled back to its norm in the initial weights. The last chunk
(whole or not) only applies. ops/lact_reference.py is the twin, written from the loss itself.

Packed documents (`starts`): every document runs as it would alone, from the initial weights,
its chunks counted from its own first token. The tokens are laid out again as the TTT dual form
does (ops/documents.py, with the chunk as its mini-batch): a document that starts inside a chunk
begins a fresh one after pad tokens (zero keys and values, so they add exact zeros to every
step) and the weights and momentum restart there. Only a document's last chunk can hold pads,
and its step is never used (the next chunk restarts, or it is the row's last), so the momentum
mean always runs over C real tokens.

Time-axis checkpointing keeps only the weights (and momentum) at the start of every group of
`time_checkpoint_group` chunks; the group's forward runs again in the backward. `compile`
fuses each chunk's step (the elementwise SwiGLU backward and the renormalisation) with
torch.compile.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megatron_ttt.ops.documents import document_layout
from megatron_ttt.run_options import check_time_checkpoint_group

# Newton-Schulz 5's (a, b, c) per iteration, as LaCT (after Muon / Moonlight) has them.
NS5_COEFFICIENTS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# LaCT's epsilons: Newton-Schulz's normalisation, the rows' renormalisation.
NS5_EPS, ROW_NORM_EPS = 1e-7, 1e-5

Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def newton_schulz5(g: torch.Tensor) -> torch.Tensor:
    """[N,m,n] -> [N,m,n]: g's rows made roughly orthonormal, X <- a X + (b A + c A^2) X with
    A = X X^T, on the wide orientation (m <= n), from X = g / (||g||_F + eps). LaCT runs this in
    bfloat16; here it runs in g's dtype."""
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS5_EPS)
    for a, b, c in NS5_COEFFICIENTS:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def renormalize_rows(w: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Each row of w [N,r,c] scaled to `norms` [N,r,1] (LaCT's post-update L2 normalisation)."""
    return w / (w.norm(dim=-1, keepdim=True) + ROW_NORM_EPS) * norms


def check_lact_inputs(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, momentum, starts) -> None:
    """Raise ValueError naming the first argument whose shape does not fit the others."""
    N, H, d_in = w0.shape
    T, d_out = q.shape[1], w1.shape[1]
    want = {"w1": (N, d_out, H), "w2": (N, H, d_in), "q": (N, T, d_in), "k": (N, T, d_in),
            "v": (N, T, d_out), "lr0": (N, T, 1), "lr1": (N, T, 1), "lr2": (N, T, 1)}
    given = {"w1": w1, "w2": w2, "q": q, "k": k, "v": v, "lr0": lr0, "lr1": lr1, "lr2": lr2}
    if momentum is not None:
        want["momentum"], given["momentum"] = (N, T, 1), momentum
    for name, shape in want.items():
        if tuple(given[name].shape) != shape:
            raise ValueError(f"lact_swiglu: {name} must be {shape} (from w0 {tuple(w0.shape)}, q "
                             f"{tuple(q.shape)}, w1 {tuple(w1.shape)}), got {tuple(given[name].shape)}")
    if T < 1 or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"lact_swiglu: needs T >= 1 tokens and an integer chunk_size >= 1, got T={T}, "
                         f"chunk_size={chunk_size!r}")
    if starts is not None and (starts.shape != (N, T) or starts.dtype != torch.bool):
        raise ValueError(f"lact_swiglu: starts must be a bool [N,T] = {(N, T)} tensor, got {starts.dtype} "
                         f"{tuple(starts.shape)}")


def lact_swiglu(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size: int = 2048, use_muon: bool = False,
                momentum: torch.Tensor | None = None, **options) -> torch.Tensor:
    """LaCT's block-causal SwiGLU fast-weight layer (shapes in the module docstring): o [N,T,Dout].
    `options` are lact_swiglu_with_weights' keywords."""
    return lact_swiglu_with_weights(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, use_muon, momentum,
                                    **options)[0]


def lact_swiglu_with_weights(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size: int = 2048, use_muon: bool = False,
                             momentum: torch.Tensor | None = None, *, starts: torch.Tensor | None = None,
                             time_checkpoint_group: int = 0, compile: bool = False) -> tuple[torch.Tensor, Weights]:
    """lact_swiglu and the fast weights its last chunk read (per row: those of the row's last document).

    Args:
        starts: [N,T] bool, a packed document begins at this token (None: one sequence). Token 0
            always starts from the initial weights.
        time_checkpoint_group: G, chunks per time-axis checkpoint group; 0 stores everything.
        compile: run each chunk's step through torch.compile.

    The arithmetic runs in the weights' dtype (LaCT keeps fp32 fast weights); o has v's dtype.
    """
    check_lact_inputs(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, momentum, starts)
    check_time_checkpoint_group(time_checkpoint_group)
    T, C = q.shape[1], chunk_size
    grid = _uniform_grid(T, C) if starts is None else _document_grid(starts, C)
    n = grid.chunks
    dtype = w0.dtype
    per_token = [grid.split(x.to(dtype)) for x in (q, k, v, lr0, lr1, lr2)]
    momenta = [None] * n if momentum is None else grid.split(momentum.to(dtype))
    chunks = [_Chunk(*(x[j] for x in per_token), momenta[j], grid.resets[j], grid.updates[j]) for j in range(n)]
    initial = (w0, w1, w2)
    norms = tuple(w.norm(dim=-1, keepdim=True) for w in initial)
    run = functools.partial(_run_chunks, initial=initial, norms=norms, use_muon=use_muon,
                            step=_compiled_step() if compile else lact_step)

    weights, velocity = initial, tuple(torch.zeros_like(w) for w in initial) if momentum is not None else ()
    group = time_checkpoint_group or n
    outputs = []
    for first in range(0, n, group):
        span = chunks[first:first + group]
        if time_checkpoint_group:
            o, weights, velocity = checkpoint(run, weights, velocity, span, use_reentrant=False)
        else:
            o, weights, velocity = run(weights, velocity, span)
        outputs.append(o)
    o = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return grid.take(o).to(v.dtype), weights


class _Chunk(NamedTuple):
    """One chunk's tokens on the grid ([N,C,...]) and what happens at it."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lr0: torch.Tensor
    lr1: torch.Tensor
    lr2: torch.Tensor
    momentum: torch.Tensor | None
    reset: torch.Tensor | None
    """None, or [N] bool: the rows whose weights (and velocity) restart from the initial ones before it."""
    update: bool | torch.Tensor
    """True (every row steps after it), False (none does) or [N] bool."""


class _Grid(NamedTuple):
    """The call's tokens on whole chunks, and what happens at each chunk."""

    chunks: int
    split: Callable[[torch.Tensor], list[torch.Tensor]]
    """[N,T,d] -> per chunk [N,C,d] (the last of one sequence may be shorter): the tokens, zeros
    (pads) where the grid has no token."""
    take: Callable[[torch.Tensor], torch.Tensor]
    """The chunks' outputs concatenated -> [N,T,d]."""
    resets: list
    """Per chunk: None, or [N] bool: the rows whose weights restart from the initial ones before it."""
    updates: list
    """Per chunk: True (every row steps after it), False (none does) or [N] bool."""


def _uniform_grid(T: int, C: int) -> _Grid:
    n = -(-T // C)
    return _Grid(n, lambda x: list(x.split(C, dim=1)), lambda y: y, [None] * n, [j < n - 1 for j in range(n)])


def _document_grid(starts: torch.Tensor, C: int) -> _Grid:
    layout = document_layout(starts, 0, C)
    n = layout.resets.shape[1]
    last_chunk = (layout.ends - 1) // C
    resets = [layout.resets[:, j] if bool(layout.resets[:, j].any()) else None for j in range(n)]
    resets[0] = None  # every row starts from the initial weights anyway
    updates = [last_chunk > j for j in range(n)]
    return _Grid(n, lambda x: list(layout.place(x.unsqueeze(1)).squeeze(1).unflatten(1, (n, C)).unbind(1)),
                 lambda y: layout.take(y.unsqueeze(1)).squeeze(1), resets, updates)


def _run_chunks(weights: Weights, velocity: tuple, chunks: list[_Chunk], *, initial: Weights, norms: tuple,
                use_muon: bool, step) -> tuple[torch.Tensor, Weights, tuple]:
    """A run of chunks from the weights (and velocity) at its start: o [N,len*C,Dout] and the
    weights and velocity after it."""
    outputs = []
    for chunk in chunks:
        if chunk.reset is not None:
            weights = where_rows(chunk.reset, initial, weights)
            velocity = tuple(torch.where(chunk.reset[:, None, None], 0, m) for m in velocity)
        outputs.append(swiglu_apply(weights, chunk.q))
        if chunk.update is False:
            continue
        new_weights, new_velocity = step(weights, velocity, norms, chunk.k, chunk.v,
                                         (chunk.lr0, chunk.lr1, chunk.lr2), chunk.momentum, use_muon)
        if chunk.update is True:
            weights, velocity = new_weights, new_velocity
        else:
            weights = where_rows(chunk.update, new_weights, weights)
            velocity = where_rows(chunk.update, new_velocity, velocity)
    return torch.cat(outputs, dim=1), weights, velocity


def where_rows(rows: torch.Tensor, chosen: tuple, other: tuple) -> tuple:
    """Per row of rows [N] bool, the tensors of `chosen` (True) or of `other` (each [N,...])."""
    return tuple(torch.where(rows[:, None, None], a, b) for a, b in zip(chosen, other))


def swiglu_apply(weights: Weights, x: torch.Tensor) -> torch.Tensor:
    """f(x) = w1 (silu(w0 x) * (w2 x)) for x [N,L,Din]: [N,L,Dout]."""
    w0, w1, w2 = weights
    return (F.silu(x @ w0.mT) * (x @ w2.mT)) @ w1.mT


def lact_step(weights: Weights, velocity: tuple, norms: tuple, k, v, lrs, momentum, use_muon: bool):
    """One chunk's update: the negative dot-product loss's descent step with its gradients
    written out (as LaCT does), momentum, Muon, the rows' renormalisation. weights and velocity
    (() without momentum) as the module docstring's, norms [N,r,1] per weight (the initial
    weights' row norms), k, v, lrs and momentum the chunk's [N,C,...]: the new weights and
    velocity. A decoder calls it once per completed chunk."""
    w0, w1, w2 = weights
    lr0, lr1, lr2 = lrs
    gate, up = k @ w0.mT, k @ w2.mT                     # [N,C,H]
    sig = torch.sigmoid(gate)
    silu = gate * sig
    d_hidden = v @ w1                                   # -dL/d(hidden), [N,C,H]
    d_up = d_hidden * silu
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))
    steps = ((d_gate.mT @ (k * lr0)), (v.mT @ (silu * up * lr1)), (d_up.mT @ (k * lr2)))
    if velocity:
        coefficient = momentum.mean(dim=1, keepdim=True)  # [N,1,1]: the chunk's mean
        steps = tuple(s + m * coefficient for s, m in zip(steps, velocity))
        velocity = steps
    if use_muon:
        steps = tuple(newton_schulz5(s) for s in steps)
    new = tuple(renormalize_rows(w + s, norm) for w, s, norm in zip(weights, steps, norms))
    return new, velocity


@functools.cache
def _compiled_step():
    return torch.compile(lact_step, dynamic=False)
