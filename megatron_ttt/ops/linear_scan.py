"""TTT-Linear's run of mini-batches with its backward written out: the dual form's "manual" backend.

The autograd step (`ops.dual._block`) records every small op of every mini-batch, forward and
backward. Here one autograd.Function runs the mini-batches of a group: its forward keeps only
what the state needs, and its backward does sequentially only what depends on the gradient
carried from later mini-batches (the LayerNorm-L2 gradient's backward and the state's
gradient); everything else, forward recomputation included, runs once for all the group's
mini-batches as batched products. kernels/README.md derives every line; per mini-batch of L rows:

    Z = K W + b,  G = LN_l2_grad(Z, T)          Zbar = Q W + b - A G
    S_W = K^T (lr G) (+ carried sums),  S_b = lr^T G (+ ...)
    W' = W - c_L S_W,  b' = b - c_L S_b        (complete mini-batches only)

The backward of the state's step, with dW', db' the gradient of the state after it:

    dS = -c_L dW'           dc_L = -<dW', S_W> - <db', S_b>
    dG = lr (K dS_W + dS_b) - A^T dZbar          dZ from dG by LN_l2_grad's backward
    dW = dW' + Q^T dZbar + K^T dZ                 db = db' + sum dZbar + sum dZ
"""

import torch

from megatron_ttt.ops.inner import LN_EPS
from megatron_ttt.ops.inputs import MiniBatches


def linear_scan(weights, grads, run: MiniBatches, complete):
    """Run a group of TTT-Linear mini-batches: (Zbar [N,g,L,d], weights after, sums after or None).

    weights (W, b) and grads (the carried sums, or None) as ops.dual._scan; run: the group's
    mini-batches, [N, g, ...] each; complete: per mini-batch, whether the state moves at its end
    (all but possibly the sequence's last)."""
    acc_W, acc_b = grads if grads is not None else (None, None)
    last_complete = complete[-1]
    inputs = (*weights, acc_W, acc_b, run.q, run.k, run.target, run.lr, run.attn0, run.coeff[0, 0, -1],
              run.ln_w[:, 0], run.ln_b[:, 0])
    # Without a backward to come (scoring, decoding) the forward keeps nothing.
    keep = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    zbar, W, b, *sums = _LinearScan.apply(*inputs, last_complete, keep)
    if grads is not None:
        # The carried sums' part of the first mini-batch's outputs, -c_i (q_i acc_W + acc_b) as in
        # ops.dual._block: it does not involve the weights, so autograd takes it.
        first = zbar[:, 0] - run.coeff[:, 0].mT * torch.baddbmm(acc_b.unsqueeze(-2), run.q[:, 0], acc_W)
        zbar = torch.cat((first.unsqueeze(1), zbar[:, 1:]), dim=1)
    return zbar, (W, b), tuple(sums) or None


def _ln_l2_grad(z: torch.Tensor, beta_minus_t: torch.Tensor, ln_w: torch.Tensor):
    """G = LN_l2_grad(z, t) (ops.inner.ln_l2_grad, its normalization in one native op) with what
    its backward reads: (G, x̂, rstd, err = gamma x̂ + beta - t, gx = gamma err, m = mean(gx x̂))."""
    xhat, _, rstd = torch.native_layer_norm(z, z.shape[-1:], None, None, LN_EPS)
    err = torch.addcmul(beta_minus_t, xhat, ln_w)
    gx = err * ln_w
    m = (gx * xhat).mean(-1, keepdim=True)
    return rstd * torch.addcmul(gx - gx.mean(-1, keepdim=True), xhat, m, value=-1), xhat, rstd, err, gx, m


def _ln_l2_grad_backward(u, grad, xhat, rstd, gx, m, ln_w_squared):
    """(dL/dgx, dL/dz) of G = LN_l2_grad(z, t) for an upstream u = dL/dG (kernels/README.md,
    with its rstd term folded into the LayerNorm backward's projection: d_rstd rstd / d = mean(u G))."""
    u_xhat = (u * xhat).mean(-1, keepdim=True)
    d_gx = rstd * torch.addcmul(u - u.mean(-1, keepdim=True), xhat, u_xhat, value=-1)
    d_xhat = ln_w_squared * d_gx - rstd * torch.addcmul(u * m, gx, u_xhat)
    along_xhat = (d_xhat * xhat).mean(-1, keepdim=True) + (u * grad).mean(-1, keepdim=True)
    return d_gx, rstd * torch.addcmul(d_xhat - d_xhat.mean(-1, keepdim=True), xhat, along_xhat, value=-1)


class _LinearScan(torch.autograd.Function):
    """(W, b, acc_W, acc_b, q, k, target, lr, A, c_L, ln_w, ln_b, last_complete, keep) -> (Zbar,
    W', b' [, S_W, S_b of an incomplete last mini-batch]). q, k, target [N,g,L,d], lr [N,g,L],
    A [N,g,L,L], ln_w, ln_b [N,1,d]; acc_W, acc_b the carried sums of the first mini-batch or
    None; keep: save what the backward needs."""

    @staticmethod
    def forward(ctx, W, b, acc_W, acc_b, q, k, target, lr, attn, c_last, ln_w, ln_b, last_complete, keep):
        n = q.shape[1]
        if keep:  # written in place, not stacked from a list: a list and its stack would hold two copies
            starts_w, starts_b = W.new_empty(W.shape[0], n, *W.shape[1:]), b.new_empty(b.shape[0], n, *b.shape[1:])
        zbars, grads = [], []
        beta_minus_t = ln_b.unsqueeze(1) - target
        for i, (q_i, k_i, bt_i, lr_i, a_i) in enumerate(zip(*(x.unbind(1) for x in (q, k, beta_minus_t, lr, attn)))):
            if keep:
                starts_w[:, i], starts_b[:, i] = W, b
            grad = _ln_l2_grad(torch.baddbmm(b.unsqueeze(-2), k_i, W), bt_i, ln_w)[0]
            zbars.append(torch.baddbmm(torch.baddbmm(b.unsqueeze(-2), q_i, W), a_i, grad, alpha=-1))
            if keep:
                grads.append(grad)
            lr_grad = grad * lr_i.unsqueeze(-1)
            step_w, step_b = torch.bmm(k_i.mT, lr_grad), lr_grad.sum(-2)
            if i == 0 and acc_W is not None:
                step_w, step_b = step_w + acc_W, step_b + acc_b
            if i < n - 1 or last_complete:
                W, b = torch.addcmul(W, step_w, c_last, value=-1), torch.addcmul(b, step_b, c_last, value=-1)
        ctx.last_complete, ctx.carried = last_complete, acc_W is not None
        if keep:
            ctx.save_for_backward(starts_w, starts_b, torch.stack(grads, 1),
                                  q, k, target, lr, attn, c_last, ln_w, ln_b, acc_W, acc_b)
        sums = () if last_complete else (step_w, step_b)
        return torch.stack(zbars, 1), W, b, *sums

    @staticmethod
    def backward(ctx, d_zbar, d_W, d_b, *d_sums):
        Ws, bs, grads, q, k, target, lr, attn, c_last, ln_w, ln_b, acc_W, acc_b = ctx.saved_tensors
        lr4, ln_w4 = lr.unsqueeze(-1), ln_w.unsqueeze(1)
        # Everything that does not depend on the carried gradient, for all mini-batches at once.
        _, xhat, rstd, err, gx, m = _ln_l2_grad(torch.matmul(k, Ws) + bs.unsqueeze(-2), ln_b.unsqueeze(1) - target,
                                                ln_w4)
        per_block = (q, k, lr4, -c_last * lr4, d_zbar, -torch.matmul(attn.mT, d_zbar), d_zbar.sum(-2), grads, xhat,
                     rstd, gx, m)
        d_W = torch.zeros_like(Ws[:, 0]) if d_W is None else d_W
        d_b = torch.zeros_like(bs[:, 0]) if d_b is None else d_b
        d_W, d_b, d_z, d_gx, moved, last_step = _carry_back(per_block, d_W, d_b, d_sums, ln_w * ln_w,
                                                            ctx.last_complete)
        g_ds_w, g_ds_b, d_c_last, d_acc = _step_terms(grads, k, lr4, c_last, moved, last_step,
                                                      (acc_W, acc_b) if ctx.carried else None)
        d_k = torch.addcmul(torch.matmul(d_z, Ws.mT), g_ds_w, lr4)
        d_lr = (k * g_ds_w).sum(-1) + g_ds_b
        d_ln_w = (d_gx * torch.addcmul(err, ln_w4, xhat)).sum((1, 2)).unsqueeze(1)
        d_ln_b = (d_gx * ln_w4).sum((1, 2)).unsqueeze(1)
        return (d_W, d_b, *d_acc, torch.matmul(d_zbar, Ws.mT), d_k, -d_gx * ln_w4, d_lr,
                -torch.matmul(d_zbar, grads.mT), d_c_last, d_ln_w, d_ln_b, None, None)


def _carry_back(per_block, d_W, d_b, d_sums, ln_w_squared, last_complete: bool):
    """The sequential part of the backward, last mini-batch first: the gradient of the state
    carried back through each. Returns (dW, db at the group's start, dZ and dL/dgx [N,g,...],
    (dW', db') kept for the mini-batches that moved the state [N,m,...], the step-sum gradient
    of an incomplete last mini-batch or ())."""
    blocks = list(zip(*(x.unbind(1) for x in per_block)))
    n = len(blocks)
    count = n if last_complete else n - 1
    moved_w, moved_b = d_W.new_empty(d_W.shape[0], count, *d_W.shape[1:]), d_b.new_empty(d_b.shape[0], count,
                                                                                        d_b.shape[1])
    d_zs, d_gxs, last_step = [None] * n, [None] * n, ()
    for i in reversed(range(n)):
        q_i, k_i, lr_i, minus_c_lr_i, d_zbar_i, dg_zbar_i, db_zbar_i, grad_i, xhat_i, rstd_i, gx_i, m_i = blocks[i]
        if i < count:
            # dS = -c_L dW', so lr (K dS_W + dS_b) = (-c_L lr) (K dW' + db')
            moved_w[:, i], moved_b[:, i] = d_W, d_b
            u = torch.addcmul(dg_zbar_i, torch.baddbmm(d_b.unsqueeze(-2), k_i, d_W), minus_c_lr_i)
        else:
            last_step = tuple(d if d is not None else torch.zeros_like(x) for d, x in zip(d_sums, (d_W, d_b)))
            u = torch.addcmul(dg_zbar_i, torch.baddbmm(last_step[1].unsqueeze(-2), k_i, last_step[0]), lr_i)
        d_gxs[i], d_zs[i] = _ln_l2_grad_backward(u, grad_i, xhat_i, rstd_i, gx_i, m_i, ln_w_squared)
        # Q^T dZbar here, not batched: that would hold a [d,d] matrix per mini-batch at once.
        d_W = torch.baddbmm(torch.baddbmm(d_W, q_i.mT, d_zbar_i), k_i.mT, d_zs[i])
        d_b = d_b + db_zbar_i + d_zs[i].sum(-2)
    return d_W, d_b, torch.stack(d_zs, 1), torch.stack(d_gxs, 1), (moved_w, moved_b), last_step


def _step_terms(grads, k, lr4, c_last, moved, last_step, acc):
    """What the state's steps S contribute once dS is known (-c_L dW' where the state moved):
    (G dS_W^T [N,g,L,d], G dS_b [N,g,L], dc_L, the carried sums' gradient or (None, None)). Only
    [L,d] products per mini-batch, never a [d,d] one."""
    (moved_w, moved_b), count = moved, moved[0].shape[1]
    g_ds_w, g_ds_b, d_c_last, d_acc = [], [], torch.zeros_like(c_last), (None, None)
    if count:
        grads_moved = grads[:, :count]
        g_ds_w.append(-c_last * torch.matmul(grads_moved, moved_w.mT))
        g_ds_b.append(-c_last * torch.matmul(grads_moved, moved_b.unsqueeze(-1)).squeeze(-1))
        # dc_L = -sum <dW', S_W> + <db', S_b> = -sum (K dW' + db') . (lr G)
        k_moved = torch.baddbmm(moved_b.unsqueeze(-2).flatten(0, 1), k[:, :count].flatten(0, 1), moved_w.flatten(0, 1))
        d_c_last = -(k_moved.unflatten(0, (-1, count)) * grads_moved * lr4[:, :count]).sum()
        if acc is not None:
            d_c_last = d_c_last - (moved_w[:, 0] * acc[0]).sum() - (moved_b[:, 0] * acc[1]).sum()
            d_acc = (-c_last * moved_w[:, 0], -c_last * moved_b[:, 0])
    if last_step:
        grad_last = grads[:, -1]
        g_ds_w.append(torch.bmm(grad_last, last_step[0].mT).unsqueeze(1))
        g_ds_b.append(torch.bmm(grad_last, last_step[1].unsqueeze(-1)).squeeze(-1).unsqueeze(1))
        if acc is not None and count == 0:
            d_acc = last_step
    return torch.cat(g_ds_w, 1), torch.cat(g_ds_b, 1), d_c_last, d_acc
