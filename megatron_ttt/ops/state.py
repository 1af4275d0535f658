"""The TTT state carried between calls, its checks, and the [B,H] <-> rows layout helpers."""

from typing import NamedTuple

import torch


class TTTState(NamedTuple):
    """What one TTT layer carries from one call to the next, for every (batch, head).

    Mini-batches are aligned to absolute positions (multiples of b from the first token), so a
    call may end inside a mini-batch; the next call then finishes it from the same weights.
    """

    weights: tuple[torch.Tensor, ...]
    """Inner weights at the start of the current mini-batch, [B,H,...] each (see ops.inner)."""
    grads: tuple[torch.Tensor, ...] | None
    """sum_j lr_j dl_j/dtheta over the tokens of the current mini-batch already seen; None at a
    boundary (zeros in a fixed-shape state)."""
    position: int | torch.Tensor = 0
    """Tokens of the current mini-batch already seen, 0 <= position < b. A 0-d int64 tensor makes
    the state fixed-shape, for compiled decoding: grads are then always held, so one decode
    step's graph serves every position (`fixed_shape`). A [B] int64 tensor is one position per
    sequence (packed documents restart mini-batches at their own first tokens); grads are then
    always held too."""

    def fixed_shape(self) -> "TTTState":
        """The same state with a tensor position and grads held at a boundary too (zeros)."""
        if isinstance(self.position, torch.Tensor):
            return self
        grads = self.grads if self.grads is not None else tuple(torch.zeros_like(w) for w in self.weights)
        position = torch.tensor(self.position, dtype=torch.int64, device=self.weights[0].device)
        return TTTState(self.weights, grads, position)

    def variable_shape(self) -> "TTTState":
        """The same state with an int position and no grads at a boundary (what ttt_dual takes)."""
        if not isinstance(self.position, torch.Tensor) or self.position.dim():
            return self
        position = int(self.position)
        return TTTState(self.weights, self.grads if position else None, position)

    def check(self, batch: int, heads: int, width: int, mini_batch_size: int) -> None:
        """Raise ValueError naming what does not fit `batch` x `heads` inner models of the
        inputs' width, or a position inside a mini-batch of `mini_batch_size` tokens."""
        if len(self.weights) not in (2, 4):
            raise ValueError(f"state.weights must hold 2 (TTT-Linear) or 4 (TTT-MLP) tensors, got {len(self.weights)}")
        widths = [width] + [w.shape[-1] for w in self.weights[0::2]]
        if widths[-1] != width:
            raise ValueError(f"the inner model must map width {width} back to {width}, its layers give {widths}")
        for index, (w, b) in enumerate(zip(self.weights[0::2], self.weights[1::2])):
            want_w, want_b = (batch, heads, widths[index], widths[index + 1]), (batch, heads, widths[index + 1])
            if w.shape != want_w or b.shape != want_b:
                raise ValueError(
                    f"state layer {index}: W must be {want_w} and b {want_b}, got {tuple(w.shape)} and {tuple(b.shape)}"
                )
        if isinstance(self.position, torch.Tensor):
            # Fixed-shape or per sequence: its values are data, checked where the state was made.
            if self.position.shape not in ((), (batch,)) or self.position.dtype != torch.int64 or self.grads is None:
                raise ValueError(f"a tensor state.position must be a 0-d or [B] = [{batch}] int64 tensor, with "
                                 "state.grads always given")
            return
        if not 0 <= self.position < mini_batch_size:
            raise ValueError(f"state.position must be in [0, {mini_batch_size}), got {self.position}")
        if (self.grads is None) != (self.position == 0):
            raise ValueError("state.grads must be given exactly when state.position > 0 (inside a mini-batch)")

    @staticmethod
    def initial(weights: tuple[torch.Tensor, ...], batch_size: int) -> "TTTState":
        """The state before the first token: the learnable initial weights [H,...] for every sequence."""
        return TTTState(tuple(w.unsqueeze(0).expand(batch_size, *w.shape) for w in weights), None, 0)


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """[B,H,...] -> [B*H,...]: one row per independent inner model."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def from_rows(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """[B*H,...] -> [B,H,...]."""
    return x.reshape(batch, heads, *x.shape[1:])


def head_param_rows(param: torch.Tensor, batch: int) -> torch.Tensor:
    """[H,d] per-head parameter -> [B*H,1,d], one row per inner model (broadcast over tokens)."""
    return param.unsqueeze(0).expand(batch, *param.shape).reshape(-1, 1, param.shape[-1])
