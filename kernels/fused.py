"""The autograd wrapper both fused TTT ops share: launch the forward and backward kernels.

Both ops take (q, k, v, lr, coeff, ln_weight, ln_bias, *state before the first token) and return
(z, *final state, *final step sums): TTT-Linear's state is (W, b), TTT-MLP's (W1, b1, W2, b2).
With resets, the state restarts from the learnable initial weights (one per head, after the
state) at the start of the flagged mini-batches.
A subclass names its two kernels (`forward_kernel`, `backward_kernel`), the compile-time
widths they need (`sizes(q, state) -> dict`) and any per-program workspace of its backward.
"""

import torch
import triton

from megatron_ttt.kernels.host import time_checkpoint_group_size, dot_precision, per_head, row_tile, rows
from megatron_ttt.kernels.resources import current_target, shared_memory_shortfall


def restart_inputs(resets: torch.Tensor | None, initial: tuple[torch.Tensor, ...], n_state: int, batch: int,
                   n_blocks: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What the kernels read for restarts: the flags, int8 [B, n_blocks], and the initial weights,
    fp32 [H,...]. Without resets every flag is 0, and one zero stands in for each initial weight:
    the kernels read an initial weight (or write its gradient) only where a flag is set."""
    if resets is None:
        unused = torch.zeros(1, device=device)
        return torch.zeros(batch, n_blocks, dtype=torch.int8, device=device), [unused] * n_state
    return resets.to(torch.int8).contiguous(), [w.float().contiguous() for w in initial]


class FusedTTTFunction(torch.autograd.Function):
    """forward(ctx, mini_batch, group, resets, q, k, v, lr, coeff, ln_weight, ln_bias, *state, *initial):
    `initial` (as many tensors as the state, [H,...]) only with resets (bool [B, n_blocks])."""

    @staticmethod
    def workspace(programs: int, meta: dict, device: torch.device) -> list[torch.Tensor]:
        """Scratch buffers the backward kernel takes after the state scratch (none by default)."""
        return []

    @classmethod
    def launch_meta(cls, q: torch.Tensor, state: tuple[torch.Tensor, ...], mini_batch: int, group: int) -> dict:
        """The compile-time arguments both kernels get."""
        G = time_checkpoint_group_size(group, triton.cdiv(q.shape[2], mini_batch))
        return dict(cls.sizes(q, state), BL=row_tile(mini_batch), G=G, PREC=dot_precision(q.dtype))

    @classmethod
    def shared_memory_shortfall(cls, q: torch.Tensor, state: tuple[torch.Tensor, ...], mini_batch: int,
                                group: int, backward: bool) -> str | None:
        """Why the kernels (the forward, and the backward if asked) cannot launch on q's CUDA device."""
        target, available = current_target(q.device)
        kernels = (cls.forward_kernel, cls.backward_kernel) if backward else (cls.forward_kernel,)
        return shared_memory_shortfall(kernels, q.dtype, cls.launch_meta(q, state, mini_batch, group), target, available)

    @classmethod
    def forward(cls, ctx, mini_batch, group, resets, q, k, v, lr, coeff, ln_weight, ln_bias, *weights):
        B, H, T, D = q.shape
        n_blocks = triton.cdiv(T, mini_batch)
        n_state = len(weights) if resets is None else len(weights) // 2
        state, initial = weights[:n_state], weights[n_state:]
        meta = cls.launch_meta(q, state, mini_batch, group)
        n_ckpt = triton.cdiv(n_blocks, meta["G"])
        inputs = [x.contiguous() for x in (q, k, v, lr)] + [coeff.float().contiguous(), ln_weight.contiguous(),
                                                             ln_bias.contiguous()]
        state0 = [rows(s) for s in state]
        z = torch.empty_like(inputs[0])
        final = [torch.empty_like(s) for s in state0]
        steps = [torch.zeros_like(s) for s in state0]
        ckpts = [torch.empty(s.shape[0], n_ckpt, *s.shape[1:], device=s.device) for s in state0]
        flags, initial0 = restart_inputs(resets, initial, n_state, B, n_blocks, q.device)
        cls.forward_kernel[(B * H,)](*inputs, *state0, flags, *initial0, z, *final, *steps, *ckpts, T, H, mini_batch,
                                     n_blocks, **meta)
        ctx.save_for_backward(*inputs, *ckpts, flags, *initial0)
        ctx.meta, ctx.mini_batch, ctx.n_blocks, ctx.state_dtypes = meta, mini_batch, n_blocks, [s.dtype for s in state]
        ctx.n_state, ctx.initial_dtypes = n_state, [w.dtype for w in initial]
        shape = lambda x: x.reshape(B, H, *x.shape[1:])  # noqa: E731
        return (z, *map(shape, final), *map(shape, steps))

    @classmethod
    def backward(cls, ctx, dz, *d_state):
        q, k, v, lr, coeff, ln_weight, ln_bias, *saved = ctx.saved_tensors
        n_state = ctx.n_state
        ckpts, flags, initial0 = saved[:n_state], saved[n_state], saved[n_state + 1:]
        B, H, T, _ = q.shape
        d_final = [rows(g) for g in d_state[:n_state]]
        d_steps = [rows(g) for g in d_state[n_state:]]
        dq, dk, dv, dlr = (torch.empty_like(x) for x in (q, k, v, lr))
        d_state0 = [torch.empty_like(g) for g in d_final]
        # Per-program sums over the restarts; without resets the kernels write none (placeholders).
        d_initial = [torch.zeros_like(g) for g in d_final] if ctx.initial_dtypes else initial0
        BL = ctx.meta["BL"]
        dln_w, dln_b = (torch.empty(B * H, q.shape[-1], device=q.device) for _ in range(2))
        dcoeff = torch.empty(B * H, BL, device=q.device)
        scratch = [torch.empty(c.shape[0], ctx.meta["G"], *c.shape[2:], device=c.device) for c in ckpts]
        scratch += cls.workspace(B * H, ctx.meta, q.device)
        cls.backward_kernel[(B * H,)](
            q, k, v, lr, coeff, ln_weight, ln_bias, *ckpts, flags, *initial0, dz.contiguous(), *d_final, *d_steps,
            dq, dk, dv, dlr, *d_state0, dln_w, dln_b, dcoeff, *d_initial, *scratch,
            T, H, ctx.mini_batch, ctx.n_blocks, **ctx.meta,
        )
        d_state0 = [g.reshape(B, H, *g.shape[1:]).to(dtype) for g, dtype in zip(d_state0, ctx.state_dtypes)]
        d_coeff = dcoeff.sum(0)[: ctx.mini_batch].to(coeff.dtype)
        d_ln = [per_head(g, B).to(ln_weight.dtype) for g in (dln_w, dln_b)]
        d_initial = [per_head(g, B).to(dtype) for g, dtype in zip(d_initial, ctx.initial_dtypes)]
        return (None, None, None, dq, dk, dv, dlr, d_coeff, *d_ln, *d_state0, *d_initial)
