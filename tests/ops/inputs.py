"""Random inputs of the TTT inner loop at the scales a real layer sees, and a relative error."""

from dataclasses import dataclass

import torch

from megatron_ttt.ops import TTTInputs, TTTState


@dataclass
class Case:
    inputs: TTTInputs
    weights: tuple[torch.Tensor, ...]
    mini_batch_size: int

    def leaves(self) -> list[torch.Tensor]:
        return [*self.inputs, *self.weights]

    def requires_grad_(self) -> "Case":
        for x in self.leaves():
            x.requires_grad_(True)
        return self

    def args(self, state: TTTState | None = None, start: int = 0,
             stop: int | None = None) -> tuple[TTTInputs, TTTState]:
        """Positional arguments of the ops (inputs, state) for tokens [start, stop)."""
        x, span = self.inputs, slice(start, stop)
        state = state or TTTState.initial(self.weights, x.q.shape[0])
        return x._replace(q=x.q[:, :, span], k=x.k[:, :, span], v=x.v[:, :, span], lr=x.lr[:, :, span]), state


def make_case(kind: str, T: int, b: int, B: int = 2, H: int = 3, d: int = 8,
              dtype: torch.dtype = torch.float64, seed: int = 0) -> Case:
    """kind 'linear' or 'mlp'; lr = base_lr * sigmoid(.) / d with base_lr 1 (linear) or 0.1 (mlp)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, std=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)  # noqa: E731
    base_lr = 1.0 if kind == "linear" else 0.1
    widths = [d, d] if kind == "linear" else [d, 4 * d, d]
    weights = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        weights += [rand(H, w_in, w_out, std=w_in**-0.5), rand(H, w_out, std=0.1)]
    inputs = TTTInputs(
        q=rand(B, H, T, d), k=rand(B, H, T, d), v=rand(B, H, T, d),
        lr=(base_lr * torch.sigmoid(rand(B, H, T)) / d).to(dtype),
        token_offset=rand(b, std=0.05),
        ln_weight=1 + rand(H, d, std=0.1), ln_bias=rand(H, d, std=0.1),
    )
    return Case(inputs=inputs, weights=tuple(weights), mini_batch_size=b)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def scalar_loss(z: torch.Tensor, state: TTTState, seed: int = 1) -> torch.Tensor:
    """A random linear functional of the output and the final state, so every gradient path is used."""
    g = torch.Generator().manual_seed(seed)
    tensors = [z, *state.weights, *(state.grads or ())]
    return sum((x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)).sum() for x in tensors)
