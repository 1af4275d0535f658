"""Muon (MomentUm Orthogonalized by Newton-Schulz) for the hidden weight matrices, AdamW for the rest.

One optimizer step is two halves:

1. `Muon.prepare` runs after the last backward of the step, when DeepSpeed has reduced the
   gradients over the data-parallel group, on whole gradients (DeepSpeed's `safe_get_full_grad`,
   which gathers a ZeRO partition): it clips by the global norm, folds each hidden matrix's
   gradient into its Nesterov momentum, orthogonalises that by Newton-Schulz on the whole
   (unsplit) matrix, gathered over the TP group, and writes this TP rank's part of the scaled
   result back as the gradient (`safe_set_full_grad`, which keeps the rank's ZeRO partition).
2. DeepSpeed's step then calls `MuonAdamW.step`, which is elementwise, so it runs unchanged on
   the flat partitions ZeRO 1-3 hand it: the hidden matrices step by their (already
   orthogonalised) gradient, the others by AdamW on their clipped gradient.

Muon's momentum is kept whole per TP rank (replicated over data parallelism, not partitioned by
ZeRO) and travels in the checkpoint's client state. The Newton-Schulz iteration runs in fp32: the
update of a TP-split matrix then equals the unsplit one's to rounding.
"""

import math

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameter_table import rules

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic iteration's (a, b, c) of Keller Jordan's Muon: the steepest slope at zero that still
brings every singular value into about [0.7, 1.2] in five steps."""
NS_STEPS = 5


def newton_schulz(matrix: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """The orthogonalised `matrix` [m, n] (about U V^T of its SVD U S V^T), in fp32."""
    x = matrix.float()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm() + 1e-7)  # the spectral norm at most 1
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def update_scale(rows: int, cols: int) -> float:
    """Moonlight's 0.2 * sqrt(max(m, n)): an orthogonal [m, n] matrix has RMS 1/sqrt(max(m, n)), so
    the update's RMS becomes 0.2, about AdamW's, and one learning rate serves both."""
    return 0.2 * math.sqrt(max(rows, cols))


def whole_matrix(local: torch.Tensor, split_dim: int | None, tp_group: dist.ProcessGroup) -> torch.Tensor:
    """This TP rank's part of a matrix joined with the other ranks' along `split_dim` (None:
    replicated, already whole). A fused projection comes back with its components' rows in rank
    order, a row permutation of the unsplit matrix, which Newton-Schulz carries through
    unchanged (it is a polynomial in X X^T times X)."""
    size = dist.get_world_size(tp_group)
    if split_dim is None or size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=tp_group)
    return torch.cat(parts, dim=split_dim)


def own_part(whole: torch.Tensor, split_dim: int | None, tp_group: dist.ProcessGroup) -> torch.Tensor:
    if split_dim is None:
        return whole
    return whole.chunk(dist.get_world_size(tp_group), dim=split_dim)[dist.get_rank(tp_group)]


class Muon:
    """Muon's half of each optimizer step (see the module's docstring) and its momentum."""

    def __init__(self, model: TTTLanguageModel, momentum: float, grad_clip: float):
        table = {rule.ours: rule for rule in rules(model.ttt)}
        self.params = dict(model.named_parameters())
        self.split_dims = {name: table[name].split_dim for name in self.params}
        self.matrices = [name for name in self.params if table[name].hidden_matrix]
        self.momentum, self.grad_clip = momentum, grad_clip
        self.tp_group = model.pg_collection.tp
        self.buffers: dict[str, torch.Tensor] = {}
        """Each hidden matrix's momentum (this TP rank's part), made at the first step."""

    def gradient_norm(self) -> float:
        """The global norm of the reduced gradients: TP-split tensors counted on every TP rank,
        replicated ones once (as DeepSpeed counts them for clipping)."""
        first = dist.get_rank(self.tp_group) == 0
        # Every rank has split matrices, so the stack is never empty; it is on the gradients' device.
        squares = torch.stack([safe_get_full_grad(p).double().pow(2).sum() for name, p in self.params.items()
                               if self.split_dims[name] is not None or first]).sum().reshape(1)
        dist.all_reduce(squares, group=self.tp_group)
        return squares.sqrt().item()

    @torch.no_grad()
    def prepare(self, optimizer: torch.optim.Optimizer) -> float:
        """Clip, then turn each hidden matrix's gradient into its Muon update; tell `optimizer`
        (MuonAdamW's groups) the clip factor for the AdamW gradients. Returns the norm before
        clipping. Collective over the whole world."""
        norm = self.gradient_norm()
        factor = min(1.0, self.grad_clip / (norm + 1e-6)) if self.grad_clip > 0 else 1.0
        for group in optimizer.param_groups:
            group["grad_factor"] = factor
        for name in self.matrices:
            p = self.params[name]
            grad = safe_get_full_grad(p).to(torch.float32, copy=True).mul_(factor)
            buffer = self.buffers.setdefault(name, torch.zeros_like(grad))
            buffer.lerp_(grad, 1 - self.momentum)
            nesterov = grad.lerp_(buffer, self.momentum)
            whole = whole_matrix(nesterov, self.split_dims[name], self.tp_group)
            update = newton_schulz(whole).mul_(update_scale(*whole.shape))
            safe_set_full_grad(p, own_part(update, self.split_dims[name], self.tp_group).to(p.dtype))
        return norm

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.buffers)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buffers = {name: value.clone() for name, value in state.items()}


class MuonAdamW(torch.optim.Optimizer):
    """The elementwise half of the step. Groups with `orthogonalised` step by their gradient as
    `Muon.prepare` left it (the scaled update); the others by AdamW on the gradient times the
    group's `grad_factor` (the clip). Both decay decoupled: p *= 1 - lr * weight_decay."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0,
                                  "orthogonalised": False, "grad_factor": 1.0})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - lr * group["weight_decay"])
                if group["orthogonalised"]:
                    p.add_(p.grad.to(p.dtype), alpha=-lr)
                else:
                    self._adamw(p, p.grad.float() * group["grad_factor"], group)

    def _adamw(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        (beta1, beta2), state = group["betas"], self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1, correction2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
        denominator = (state["exp_avg_sq"] / correction2).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / correction1)
