"""The twin of ops/lact.py: LaCT's SwiGLU fast weights one row, one document, one chunk at a time,
each step's gradients taken by autograd from the loss itself. Slow; the tests run it in float64.
"""

import torch
import torch.nn.functional as F

from megatron_ttt.ops.lact import Weights, check_lact_inputs, newton_schulz5, renormalize_rows


def lact_swiglu_reference(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size: int, use_muon: bool = False,
                          momentum: torch.Tensor | None = None, starts: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, Weights]:
    """What lact_swiglu_with_weights computes (same arguments, same results), written for clarity."""
    check_lact_inputs(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, momentum, starts)
    N, T = q.shape[:2]
    outputs, finals = [], []
    for row in range(N):
        initial = (w0[row], w1[row], w2[row])
        bounds = [0] if starts is None else [0] + [t for t in range(1, T) if starts[row, t]]
        pieces, weights = [], initial
        for begin, end in zip(bounds, bounds[1:] + [T]):
            def of_document(x):
                return None if x is None else x[row, begin:end]

            o, weights = _one_document(initial, *map(of_document, (q, k, v, lr0, lr1, lr2, momentum)),
                                       chunk_size=chunk_size, use_muon=use_muon)
            pieces.append(o)
        outputs.append(torch.cat(pieces))
        finals.append(weights)
    return torch.stack(outputs), tuple(torch.stack(w) for w in zip(*finals))


def _f(weights: Weights, x: torch.Tensor) -> torch.Tensor:
    """f(x) = w1 (silu(w0 x) * (w2 x)), x [L,Din] -> [L,Dout], token by token as written."""
    w0, w1, w2 = weights
    return torch.stack([w1 @ (F.silu(w0 @ xt) * (w2 @ xt)) for xt in x])


def _one_document(initial: Weights, q, k, v, lr0, lr1, lr2, momentum, *, chunk_size: int, use_muon: bool):
    """One document alone: every chunk but the last applies, then steps; the last only applies."""
    norms = [w.norm(dim=-1, keepdim=True) for w in initial]
    weights, velocity = initial, None
    bounds = list(range(0, len(q), chunk_size))
    outputs = []
    for i, begin in enumerate(bounds):
        chunk = slice(begin, begin + chunk_size)
        outputs.append(_f(weights, q[chunk]))
        if i == len(bounds) - 1:
            break
        steps = _descent_steps(weights, k[chunk], v[chunk], (lr0[chunk], lr1[chunk], lr2[chunk]))
        if momentum is not None:
            coefficient = momentum[chunk].mean()
            if velocity is not None:
                steps = [s + coefficient * m for s, m in zip(steps, velocity)]
            velocity = steps
        if use_muon:
            steps = [newton_schulz5(s.unsqueeze(0)).squeeze(0) for s in steps]
        weights = tuple(renormalize_rows((w + s).unsqueeze(0), n.unsqueeze(0)).squeeze(0)
                        for w, s, n in zip(weights, steps, norms))
    return torch.cat(outputs), weights


def _descent_steps(weights: Weights, k, v, lrs) -> list[torch.Tensor]:
    """-sum_t lr_t dL_t/dw for each weight w with its own lrs, L_t = -<f(k_t), v_t>; create_graph,
    so the outer backward runs through it."""
    # Weights that no input reaches (no gradient asked for) still need one here.
    weights = tuple(w if w.requires_grad else w.detach().requires_grad_() for w in weights)
    steps = []
    with torch.enable_grad():
        for w_index, lr in enumerate(lrs):
            loss = -(lr.squeeze(-1) * (_f(weights, k) * v).sum(-1)).sum()
            (grad,) = torch.autograd.grad(loss, weights[w_index], create_graph=True)
            steps.append(-grad)
    return steps
