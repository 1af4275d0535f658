"""The inner model of a TTT layer and the pieces every form of the inner loop shares.

The inner model of one head is f(x) = x + LN(g(x)), where g is one linear layer (TTT-Linear)
or linear -> tanh-GELU -> linear (TTT-MLP), and LN is a per-head LayerNorm (eps 1e-6).
Its self-supervised loss on token j is l_j = 1/2 ||f(k_j) - v_j||^2.

The state's weights are a flat tuple of (W, b) pairs, one pair per layer of g:
TTT-Linear (W1 [N,d,d], b1 [N,d]); TTT-MLP (W1 [N,d,4d], b1 [N,4d], W2 [N,4d,d], b2 [N,d]).

Shape legend: N rows of independent inner models (batch x heads), L tokens of a mini-batch,
d head dim, e the width of a layer's output.
"""

import math

import torch
import torch.nn.functional as F

LN_EPS = 1e-6
_GELU_C = math.sqrt(2.0 / math.pi)


def layers(weights: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (W, b) pairs of a flat weight tuple."""
    return list(zip(weights[0::2], weights[1::2]))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the tanh-approximated GELU."""
    t = torch.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)


def _normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) / sqrt(var + eps) over the last dim, and 1 / sqrt(var + eps)."""
    centered = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((centered * centered).mean(-1, keepdim=True) + LN_EPS)
    return centered * rstd, rstd


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-row affine parameters (broadcast over tokens)."""
    return torch.addcmul(bias, _normalize(x)[0], weight)


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """dl/dz of l = 1/2 ||LN(z) - target||^2, row by row: the fused LayerNorm backward."""
    xhat, rstd = _normalize(z)
    g_xhat = torch.addcmul(bias - target, xhat, weight) * weight
    projection = (g_xhat * xhat).mean(-1, keepdim=True)
    return rstd * torch.addcmul(g_xhat - g_xhat.mean(-1, keepdim=True), xhat, projection, value=-1)


def token_coefficients(token_offset: torch.Tensor) -> torch.Tensor:
    """c[i] = max(0, 1/(i+1) + token_offset[i]): the per-position scale of the inner lr, [b]."""
    position = torch.arange(1, token_offset.shape[0] + 1, dtype=token_offset.dtype, device=token_offset.device)
    return torch.clamp_min(1.0 / position + token_offset, 0.0)


def layers_forward(weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run g on x [N,L,d]: the input of every layer and every pre-activation (the last is g(x))."""
    inputs, preacts = [], []
    pairs = layers(weights)
    for index, (w, b) in enumerate(pairs):
        inputs.append(x)
        z = torch.baddbmm(b.unsqueeze(-2), x, w)
        preacts.append(z)
        if index < len(pairs) - 1:
            x = gelu_tanh(z)
    return inputs, preacts


def keys_backward(
    weights: tuple[torch.Tensor, ...],
    preacts: list[torch.Tensor],
    target: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
) -> list[torch.Tensor]:
    """dl_j/dz for every layer's pre-activation, all taken at the same weights, [N,L,e] each."""
    grad = ln_l2_grad(preacts[-1], target, ln_weight, ln_bias)
    grads = [grad]
    pairs = layers(weights)
    for index in range(len(pairs) - 2, -1, -1):
        w_next = pairs[index + 1][0]
        grad = torch.bmm(grad, w_next.mT) * gelu_tanh_grad(preacts[index])
        grads.append(grad)
    return grads[::-1]


def lr_weighted_grads(
    inputs: list[torch.Tensor], grads: list[torch.Tensor], lr: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """sum_j lr_j dl_j/dtheta for every weight: (x^T diag(lr) g, lr^T g) per layer. lr is [N,L]."""
    out = []
    for x, g in zip(inputs, grads):
        out.append(torch.bmm((x * lr.unsqueeze(-1)).mT, g))
        out.append(torch.bmm(lr.unsqueeze(-2), g).squeeze(-2))
    return tuple(out)
