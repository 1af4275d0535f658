"""TTT-Linear forward and backward kernels: one program per (batch, head), the state on chip.

Shape legend: N = B*H programs, T tokens, D head dim, BL the mini-batch tile (>= 16 rows,
rows >= mini_batch are padding with lr = 0), G mini-batches per checkpoint group.
Per mini-batch (kernels/README.md has the derivation):
    Z = K W + b, Grad = dl/dZ, A = eta * (Q K^T + 1), Zbar = Q W + b - A Grad,
    out = Q + LN(Zbar), W' = W - c[b-1] K^T (lr * Grad), b' = b - c[b-1] lr^T Grad.
A mini-batch whose reset flag is set starts from the initial weights (W_init, b_init) of its head
instead of the previous mini-batch's; in the backward, the gradient of its starting state goes to
(W_init, b_init) and none to the previous mini-batch.
"""

import triton
import triton.language as tl

from megatron_ttt.kernels.common import (
    block_inputs,
    causal_lr,
    head_constants,
    ln_l2_grad,
    ln_l2_grad_backward,
    load_rows,
    matrix_offsets,
    residual_layer_norm,
    residual_layer_norm_backward,
    restart_gradient,
    restarts,
    store_rows,
    store_vector,
)


@triton.jit
def _key_grad(k, target, w, b, ln_w, ln_b, D: tl.constexpr, PREC: tl.constexpr):
    z = tl.dot(k, w, input_precision=PREC) + b[None, :]
    return ln_l2_grad(z, target, ln_w, ln_b, D)


@triton.jit
def ttt_linear_fwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, w0_ptr, b0_ptr, resets_ptr, init_w_ptr, init_b_ptr,
    z_ptr, w_out_ptr, b_out_ptr, acc_w_ptr, acc_b_ptr, ckpt_w_ptr, ckpt_b_ptr,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, BL: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    dd = matrix_offsets(D, D)
    seq = n * T * D
    w = tl.load(w0_ptr + n * D * D + dd)
    b = tl.load(b0_ptr + n * D + cols)
    ln_w, ln_b, c, c_last = head_constants(ln_w_ptr, ln_b_ptr, coeff_ptr, n, H, mini_batch, D, BL)
    n_ckpt = (n_blocks + G - 1) // G
    init_w_ptr += (n % H) * D * D
    init_b_ptr += (n % H) * D
    for blk in range(n_blocks):
        # The checkpoint is the state carried into the group; whoever runs a mini-batch applies its reset.
        if blk % G == 0:
            tl.store(ckpt_w_ptr + (n * n_ckpt + blk // G) * D * D + dd, w)
            tl.store(ckpt_b_ptr + (n * n_ckpt + blk // G) * D + cols, b)
        if restarts(resets_ptr, n, H, blk, n_blocks):
            # A scalar branch, not a select: selecting between w and a masked load doubles the
            # forward's shared memory (64 KiB at D = 64).
            w = tl.load(init_w_ptr + dd)
            b = tl.load(init_b_ptr + cols)
        start = blk * mini_batch
        q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                         mini_batch, D, BL)
        grad, _, _, _, _ = _key_grad(k, target, w, b, ln_w, ln_b, D, PREC)
        attn = causal_lr(c, lr, BL) * (tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0)
        zbar = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(attn, grad, input_precision=PREC)
        out, _, _ = residual_layer_norm(q, zbar, ln_w, ln_b, D)
        store_rows(z_ptr + seq, out, start, T, mini_batch, D, BL)
        step_w = tl.dot(tl.trans(k), grad * lr[:, None], input_precision=PREC)
        step_b = tl.sum(grad * lr[:, None], 0)
        if start + mini_batch <= T:
            w = w - c_last * step_w
            b = b - c_last * step_b
        else:
            tl.store(acc_w_ptr + n * D * D + dd, step_w)
            tl.store(acc_b_ptr + n * D + cols, step_b)
    tl.store(w_out_ptr + n * D * D + dd, w)
    tl.store(b_out_ptr + n * D + cols, b)


@triton.jit
def ttt_linear_bwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, ckpt_w_ptr, ckpt_b_ptr, resets_ptr, init_w_ptr,
    init_b_ptr, dz_ptr, dw_out_ptr, db_out_ptr, dacc_w_ptr, dacc_b_ptr,
    dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dw0_ptr, db0_ptr, dln_w_ptr, dln_b_ptr, dcoeff_ptr, dinit_w_ptr, dinit_b_ptr,
    scratch_w_ptr, scratch_b_ptr,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, BL: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    rows = tl.arange(0, BL)
    dd = matrix_offsets(D, D)
    seq = n * T * D
    ln_w, ln_b, c, c_last = head_constants(ln_w_ptr, ln_b_ptr, coeff_ptr, n, H, mini_batch, D, BL)
    dw = tl.load(dw_out_ptr + n * D * D + dd)
    db = tl.load(db_out_ptr + n * D + cols)
    dln_w = tl.zeros([D], tl.float32)
    dln_b = tl.zeros([D], tl.float32)
    dc = tl.zeros([BL], tl.float32)
    init_w_ptr += (n % H) * D * D
    init_b_ptr += (n % H) * D
    n_ckpt = (n_blocks + G - 1) // G
    for group_back in range(n_ckpt):
        group = n_ckpt - 1 - group_back
        first = group * G
        count = tl.minimum(G, n_blocks - first)
        # Replay the group from its checkpoint, keeping each mini-batch's starting state.
        w = tl.load(ckpt_w_ptr + (n * n_ckpt + group) * D * D + dd)
        b = tl.load(ckpt_b_ptr + (n * n_ckpt + group) * D + cols)
        for j in range(count):
            if restarts(resets_ptr, n, H, first + j, n_blocks):
                w = tl.load(init_w_ptr + dd)
                b = tl.load(init_b_ptr + cols)
            tl.store(scratch_w_ptr + (n * G + j) * D * D + dd, w)
            tl.store(scratch_b_ptr + (n * G + j) * D + cols, b)
            _, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T,
                                             (first + j) * mini_batch, T, mini_batch, D, BL)
            grad, _, _, _, _ = _key_grad(k, target, w, b, ln_w, ln_b, D, PREC)
            w = w - c_last * tl.dot(tl.trans(k), grad * lr[:, None], input_precision=PREC)
            b = b - c_last * tl.sum(grad * lr[:, None], 0)
        for j_back in range(count):
            blk = first + count - 1 - j_back
            start = blk * mini_batch
            w = tl.load(scratch_w_ptr + (n * G + count - 1 - j_back) * D * D + dd)
            b = tl.load(scratch_b_ptr + (n * G + count - 1 - j_back) * D + cols)
            q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                             mini_batch, D, BL)
            dout = load_rows(dz_ptr + seq, start, T, mini_batch, D, BL)
            # Recompute the mini-batch.
            grad, xhat_k, rstd_k, gx_k, m_k = _key_grad(k, target, w, b, ln_w, ln_b, D, PREC)
            eta = causal_lr(c, lr, BL)
            qk = tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0
            attn = eta * qk
            zbar = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(attn, grad, input_precision=PREC)
            _, xhat_o, rstd_o = residual_layer_norm(q, zbar, ln_w, ln_b, D)
            step_w = tl.dot(tl.trans(k), grad * lr[:, None], input_precision=PREC)
            step_b = tl.sum(grad * lr[:, None], 0)
            # out = q + LN(zbar)
            dln_w += tl.sum(dout * xhat_o, 0)
            dln_b += tl.sum(dout, 0)
            dzbar = residual_layer_norm_backward(dout, xhat_o, rstd_o, ln_w, D)
            # The state update (or, for a last incomplete mini-batch, the returned step sums).
            if start + mini_batch <= T:
                dstep_w = -c_last * dw
                dstep_b = -c_last * db
                dc += tl.where(rows == mini_batch - 1, -(tl.sum(tl.sum(dw * step_w, 1), 0) + tl.sum(db * step_b, 0)), 0.0)
            else:
                dstep_w = tl.load(dacc_w_ptr + n * D * D + dd)
                dstep_b = tl.load(dacc_b_ptr + n * D + cols)
            # zbar = q W + b - attn grad
            dq = dout + tl.dot(dzbar, tl.trans(w), input_precision=PREC)
            dw += tl.dot(tl.trans(q), dzbar, input_precision=PREC)
            db += tl.sum(dzbar, 0)
            dattn = -tl.dot(dzbar, tl.trans(grad), input_precision=PREC)
            dgrad = -tl.dot(tl.trans(attn), dzbar, input_precision=PREC)
            # step_w = k^T (lr * grad), step_b = lr^T grad
            grad_dstep = tl.dot(grad, tl.trans(dstep_w), input_precision=PREC)
            dk = lr[:, None] * grad_dstep
            dgrad += lr[:, None] * (tl.dot(k, dstep_w, input_precision=PREC) + dstep_b[None, :])
            dlr = tl.sum(k * grad_dstep, 1) + tl.sum(grad * dstep_b[None, :], 1)
            # attn = eta * (q k^T + 1), eta[i, j] = c[i] lr[j]
            deta = tl.where(rows[:, None] >= rows[None, :], dattn * qk, 0.0)
            dqk = dattn * eta
            dq += tl.dot(dqk, k, input_precision=PREC)
            dk += tl.dot(tl.trans(dqk), q, input_precision=PREC)
            dlr += tl.sum(deta * c[:, None], 0)
            dc += tl.sum(deta * lr[None, :], 1)
            # grad = dl/dz at z = k W + b
            dz, dtarget, dln_w_rows, dln_b_rows = ln_l2_grad_backward(dgrad, xhat_k, rstd_k, gx_k, m_k, target,
                                                                      ln_w, ln_b, D)
            dln_w += tl.sum(dln_w_rows, 0)
            dln_b += tl.sum(dln_b_rows, 0)
            dk += tl.dot(dz, tl.trans(w), input_precision=PREC) - dtarget
            dw += tl.dot(tl.trans(k), dz, input_precision=PREC)
            db += tl.sum(dz, 0)
            # dw, db: the gradient of the state this mini-batch starts from.
            reset = restarts(resets_ptr, n, H, blk, n_blocks)
            dw = restart_gradient(dw, reset, dinit_w_ptr + n * D * D, dd)
            db = restart_gradient(db, reset, dinit_b_ptr + n * D, cols)
            store_rows(dq_ptr + seq, dq, start, T, mini_batch, D, BL)
            store_rows(dk_ptr + seq, dk, start, T, mini_batch, D, BL)
            store_rows(dv_ptr + seq, dtarget, start, T, mini_batch, D, BL)
            store_vector(dlr_ptr + n * T, dlr, start, T, mini_batch, BL)
    tl.store(dw0_ptr + n * D * D + dd, dw)
    tl.store(db0_ptr + n * D + cols, db)
    tl.store(dln_w_ptr + n * D + cols, dln_w)
    tl.store(dln_b_ptr + n * D + cols, dln_b)
    tl.store(dcoeff_ptr + n * BL + rows, dc)
