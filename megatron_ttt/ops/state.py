"""The TTT state carried between calls, and the checks every entry point makes on its inputs."""

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
    step's graph serves every position (`fixed_shape`)."""

    def fixed_shape(self) -> "TTTState":
        """The same state with a tensor position and grads held at a boundary too (zeros)."""
        if isinstance(self.position, torch.Tensor):
            return self
        grads = self.grads if self.grads is not None else tuple(torch.zeros_like(w) for w in self.weights)
        position = torch.tensor(self.position, dtype=torch.int64, device=self.weights[0].device)
        return TTTState(self.weights, grads, position)

    def variable_shape(self) -> "TTTState":
        """The same state with an int position and no grads at a boundary (what ttt_dual takes)."""
        if not isinstance(self.position, torch.Tensor):
            return self
        position = int(self.position)
        return TTTState(self.weights, self.grads if position else None, position)

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


def check_inputs(inputs: tuple[torch.Tensor, ...], state: TTTState, mini_batch_size: int) -> None:
    """Raise ValueError naming the first argument whose shape does not fit the others. `inputs`:
    (q, k, v, lr, token_offset, ln_weight, ln_bias), the tensors every entry point takes first."""
    q, k, v, lr, token_offset, ln_weight, ln_bias = inputs
    if q.dim() != 4:
        raise ValueError(f"q must be [B,H,T,d], got shape {tuple(q.shape)}")
    B, H, T, d = q.shape
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, q has {tuple(q.shape)}; they must match")
    if lr.shape != (B, H, T):
        raise ValueError(f"lr must be [B,H,T] = {(B, H, T)}, got {tuple(lr.shape)}")
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    if token_offset.shape != (mini_batch_size,):
        raise ValueError(f"token_offset must be [mini_batch_size] = [{mini_batch_size}], got {tuple(token_offset.shape)}")
    for name, x in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if x.shape != (H, d):
            raise ValueError(f"{name} must be [H,d] = {(H, d)}, got {tuple(x.shape)}")
    if len(state.weights) not in (2, 4):
        raise ValueError(f"state.weights must hold 2 (TTT-Linear) or 4 (TTT-MLP) tensors, got {len(state.weights)}")
    widths = [d] + [w.shape[-1] for w in state.weights[0::2]]
    if widths[-1] != d:
        raise ValueError(f"the inner model must map width {d} back to {d}, its layers give {widths}")
    for index, (w, b) in enumerate(zip(state.weights[0::2], state.weights[1::2])):
        want_w, want_b = (B, H, widths[index], widths[index + 1]), (B, H, widths[index + 1])
        if w.shape != want_w or b.shape != want_b:
            raise ValueError(
                f"state layer {index}: W must be {want_w} and b {want_b}, got {tuple(w.shape)} and {tuple(b.shape)}"
            )
    if isinstance(state.position, torch.Tensor):
        # Fixed-shape (compiled decoding): its value is data, checked where the state was made.
        if state.position.dim() != 0 or state.position.dtype != torch.int64 or state.grads is None:
            raise ValueError("a tensor state.position must be a 0-d int64 tensor, with state.grads always given")
        return
    if not 0 <= state.position < mini_batch_size:
        raise ValueError(f"state.position must be in [0, {mini_batch_size}), got {state.position}")
    if (state.grads is None) != (state.position == 0):
        raise ValueError("state.grads must be given exactly when state.position > 0 (inside a mini-batch)")
