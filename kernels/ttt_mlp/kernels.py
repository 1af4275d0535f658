"""TTT-MLP forward and backward kernels: one program per (batch, head), the state on chip.

Shape legend as in ttt_linear/kernels.py, plus HID = the inner MLP's hidden width (4 D).
Per mini-batch (kernels/README.md has the derivation):
    keys:    Z1 = K W1 + b1, X2 = gelu(Z1), Z2 = X2 W2 + b2, G2 = dl/dZ2, G1 = (G2 W2^T) gelu'(Z1)
    queries: Zb1 = Q W1 + b1 - A1 G1, Xb2 = gelu(Zb1), Zb2 = Xb2 W2 + b2 - A2 G2, out = Q + LN(Zb2)
    with A1 = eta * (Q K^T + 1), A2 = eta * (Xb2 X2^T + 1); each layer steps by c[b-1] x its lr-weighted sums.

W1 and W2 (d x 4d each) are read from a per-program fp32 buffer where they are used, not held
in registers: at d = 64 they are 64 KiB each, and a register copy kept across a mini-batch
makes the compiler keep shared-memory copies of both and their transposes alive, more than a
GPU has (benchmarks/kernel_resources.py). The buffer stays in L1/L2; the biases stay in registers.
"""

import triton
import triton.language as tl

from megatron_ttt.kernels.common import (
    block_inputs,
    causal_lr,
    gelu_tanh,
    gelu_tanh_grads,
    ln_l2_grad,
    ln_l2_grad_backward,
    load_matrix,
    load_rows,
    load_transposed,
    matrix_offsets,
    residual_layer_norm,
    residual_layer_norm_backward,
    store_rows,
    store_vector,
)


@triton.jit
def _keys(k, target, w1_ptr, b1, w2_ptr, b2, ln_w, ln_b, D: tl.constexpr, HID: tl.constexpr, PREC: tl.constexpr):
    """The key path: (z1, x2, g1, g2) and what the ln_l2_grad backward needs."""
    z1 = tl.dot(k, load_matrix(w1_ptr, D, HID), input_precision=PREC) + b1[None, :]
    x2 = gelu_tanh(z1)
    z2 = tl.dot(x2, load_matrix(w2_ptr, HID, D), input_precision=PREC) + b2[None, :]
    g2, xhat, rstd, gx, m = ln_l2_grad(z2, target, ln_w, ln_b, D)
    gelu1, gelu2 = gelu_tanh_grads(z1)
    g2_w2 = tl.dot(g2, load_transposed(w2_ptr, HID, D), input_precision=PREC)
    return z1, x2, g2_w2 * gelu1, g2, g2_w2, gelu1, gelu2, xhat, rstd, gx, m


@triton.jit
def _queries(q, k, x2, g1, g2, eta, w1_ptr, b1, w2_ptr, b2, D: tl.constexpr, HID: tl.constexpr,
             PREC: tl.constexpr):
    """The query path: (zb1, xb2, zb2, q k^T + 1, xb2 x2^T + 1)."""
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0
    zb1 = (tl.dot(q, load_matrix(w1_ptr, D, HID), input_precision=PREC) + b1[None, :]
           - tl.dot(eta * qk, g1, input_precision=PREC))
    xb2 = gelu_tanh(zb1)
    xx = tl.dot(xb2, tl.trans(x2), input_precision=PREC) + 1.0
    zb2 = (tl.dot(xb2, load_matrix(w2_ptr, HID, D), input_precision=PREC) + b2[None, :]
           - tl.dot(eta * xx, g2, input_precision=PREC))
    return zb1, xb2, zb2, qk, xx


@triton.jit
def _steps(k, x2, g1, g2, lr, PREC: tl.constexpr):
    """sum_j lr_j dl_j/dtheta for (W1, b1, W2, b2)."""
    lg1 = g1 * lr[:, None]
    lg2 = g2 * lr[:, None]
    return (tl.dot(tl.trans(k), lg1, input_precision=PREC), tl.sum(lg1, 0),
            tl.dot(tl.trans(x2), lg2, input_precision=PREC), tl.sum(lg2, 0))


@triton.jit
def _update(w_ptr, step, c_last, R: tl.constexpr, C: tl.constexpr):
    """W -= c_last * step for a weight kept in memory, visible to the whole program afterwards.

    The barriers order the program's threads around the write: every read of the old W before
    it, every read of the new W after it (Triton orders shared memory by itself, not global).
    """
    offsets = matrix_offsets(R, C)
    new = tl.load(w_ptr + offsets) - c_last * step
    tl.debug_barrier()
    tl.store(w_ptr + offsets, new)
    tl.debug_barrier()


@triton.jit
def _copy_weights(src_w1, src_w2, dst_w1, dst_w2, D: tl.constexpr, HID: tl.constexpr):
    """Copy W1, W2 between per-program buffers, ordered as in _update."""
    w1 = tl.load(src_w1 + matrix_offsets(D, HID))
    w2 = tl.load(src_w2 + matrix_offsets(HID, D))
    tl.debug_barrier()
    tl.store(dst_w1 + matrix_offsets(D, HID), w1)
    tl.store(dst_w2 + matrix_offsets(HID, D), w2)
    tl.debug_barrier()


@triton.jit
def ttt_mlp_fwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, w1_0, b1_0, w2_0, b2_0,
    z_ptr, w1_out, b1_out, w2_out, b2_out, acc_w1, acc_b1, acc_w2, acc_b2, ck_w1, ck_b1, ck_w2, ck_b2,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, HID: tl.constexpr, BL: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    hid = tl.arange(0, HID)
    seq = n * T * D
    # The current W1, W2 live in the output buffers, updated in place after every mini-batch.
    w1_ptr = w1_out + n * D * HID
    w2_ptr = w2_out + n * HID * D
    _copy_weights(w1_0 + n * D * HID, w2_0 + n * HID * D, w1_ptr, w2_ptr, D, HID)
    b1 = tl.load(b1_0 + n * HID + hid)
    b2 = tl.load(b2_0 + n * D + cols)
    ln_w = tl.load(ln_w_ptr + (n % H) * D + cols).to(tl.float32)
    ln_b = tl.load(ln_b_ptr + (n % H) * D + cols).to(tl.float32)
    c = tl.load(coeff_ptr + tl.arange(0, BL), mask=tl.arange(0, BL) < mini_batch, other=0.0)
    c_last = tl.load(coeff_ptr + mini_batch - 1)
    n_ckpt = (n_blocks + G - 1) // G
    for blk in range(n_blocks):
        if blk % G == 0:
            slot = n * n_ckpt + blk // G
            _copy_weights(w1_ptr, w2_ptr, ck_w1 + slot * D * HID, ck_w2 + slot * HID * D, D, HID)
            tl.store(ck_b1 + slot * HID + hid, b1)
            tl.store(ck_b2 + slot * D + cols, b2)
        start = blk * mini_batch
        q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                        mini_batch, D, BL)
        _, x2, g1, g2, _, _, _, _, _, _, _ = _keys(k, target, w1_ptr, b1, w2_ptr, b2, ln_w, ln_b, D, HID, PREC)
        _, _, zb2, _, _ = _queries(q, k, x2, g1, g2, causal_lr(c, lr, BL), w1_ptr, b1, w2_ptr, b2, D, HID, PREC)
        out, _, _ = residual_layer_norm(q, zb2, ln_w, ln_b, D)
        store_rows(z_ptr + seq, out, start, T, mini_batch, D, BL)
        s_w1, s_b1, s_w2, s_b2 = _steps(k, x2, g1, g2, lr, PREC)
        if start + mini_batch <= T:
            _update(w1_ptr, s_w1, c_last, D, HID)
            _update(w2_ptr, s_w2, c_last, HID, D)
            b1 = b1 - c_last * s_b1
            b2 = b2 - c_last * s_b2
        else:
            tl.store(acc_w1 + n * D * HID + matrix_offsets(D, HID), s_w1)
            tl.store(acc_b1 + n * HID + hid, s_b1)
            tl.store(acc_w2 + n * HID * D + matrix_offsets(HID, D), s_w2)
            tl.store(acc_b2 + n * D + cols, s_b2)
    tl.store(b1_out + n * HID + hid, b1)
    tl.store(b2_out + n * D + cols, b2)


@triton.jit
def ttt_mlp_bwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, ck_w1, ck_b1, ck_w2, ck_b2,
    dz_ptr, dw1_out, db1_out, dw2_out, db2_out, dacc_w1, dacc_b1, dacc_w2, dacc_b2,
    dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dw1_0, db1_0, dw2_0, db2_0, dln_w_ptr, dln_b_ptr, dcoeff_ptr,
    sc_w1, sc_b1, sc_w2, sc_b2,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, HID: tl.constexpr, BL: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    hid = tl.arange(0, HID)
    rows = tl.arange(0, BL)
    dh = matrix_offsets(D, HID)
    hd = matrix_offsets(HID, D)
    seq = n * T * D
    ln_w = tl.load(ln_w_ptr + (n % H) * D + cols).to(tl.float32)
    ln_b = tl.load(ln_b_ptr + (n % H) * D + cols).to(tl.float32)
    c = tl.load(coeff_ptr + rows, mask=rows < mini_batch, other=0.0)
    c_last = tl.load(coeff_ptr + mini_batch - 1)
    dw1 = tl.load(dw1_out + n * D * HID + dh)
    db1 = tl.load(db1_out + n * HID + hid)
    dw2 = tl.load(dw2_out + n * HID * D + hd)
    db2 = tl.load(db2_out + n * D + cols)
    dln_w = tl.zeros([D], tl.float32)
    dln_b = tl.zeros([D], tl.float32)
    dc = tl.zeros([BL], tl.float32)
    n_ckpt = (n_blocks + G - 1) // G
    for group_back in range(n_ckpt):
        group = n_ckpt - 1 - group_back
        first = group * G
        count = tl.minimum(G, n_blocks - first)
        slot = n * n_ckpt + group
        # Replay the group from its checkpoint into the scratch: the state at each mini-batch's start.
        _copy_weights(ck_w1 + slot * D * HID, ck_w2 + slot * HID * D, sc_w1 + n * G * D * HID,
                      sc_w2 + n * G * HID * D, D, HID)
        b1 = tl.load(ck_b1 + slot * HID + hid)
        b2 = tl.load(ck_b2 + slot * D + cols)
        for j in range(count):
            w1_ptr = sc_w1 + (n * G + j) * D * HID
            w2_ptr = sc_w2 + (n * G + j) * HID * D
            tl.store(sc_b1 + (n * G + j) * HID + hid, b1)
            tl.store(sc_b2 + (n * G + j) * D + cols, b2)
            if j < count - 1:
                _, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T,
                                                (first + j) * mini_batch, T, mini_batch, D, BL)
                _, x2, g1, g2, _, _, _, _, _, _, _ = _keys(k, target, w1_ptr, b1, w2_ptr, b2, ln_w, ln_b, D, HID, PREC)
                s_w1, s_b1, s_w2, s_b2 = _steps(k, x2, g1, g2, lr, PREC)
                # Slot j + 1 is not read before the barrier in _copy_weights or this one.
                tl.store(w1_ptr + D * HID + dh, tl.load(w1_ptr + dh) - c_last * s_w1)
                tl.store(w2_ptr + HID * D + hd, tl.load(w2_ptr + hd) - c_last * s_w2)
                tl.debug_barrier()
                b1 = b1 - c_last * s_b1
                b2 = b2 - c_last * s_b2
        for j_back in range(count):
            j = count - 1 - j_back
            start = (first + j) * mini_batch
            w1_ptr = sc_w1 + (n * G + j) * D * HID
            w2_ptr = sc_w2 + (n * G + j) * HID * D
            b1 = tl.load(sc_b1 + (n * G + j) * HID + hid)
            b2 = tl.load(sc_b2 + (n * G + j) * D + cols)
            q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                            mini_batch, D, BL)
            dout = load_rows(dz_ptr + seq, start, T, mini_batch, D, BL)
            # Recompute the mini-batch.
            z1, x2, g1, g2, g2_w2, gelu1, gelu2, xhat_k, rstd_k, gx_k, m_k = _keys(k, target, w1_ptr, b1, w2_ptr, b2,
                                                                                 ln_w, ln_b, D, HID, PREC)
            eta = causal_lr(c, lr, BL)
            zb1, xb2, zb2, qk, xx = _queries(q, k, x2, g1, g2, eta, w1_ptr, b1, w2_ptr, b2, D, HID, PREC)
            _, xhat_o, rstd_o = residual_layer_norm(q, zb2, ln_w, ln_b, D)
            s_w1, s_b1, s_w2, s_b2 = _steps(k, x2, g1, g2, lr, PREC)
            # out = q + LN(zb2)
            dln_w += tl.sum(dout * xhat_o, 0)
            dln_b += tl.sum(dout, 0)
            dzb2 = residual_layer_norm_backward(dout, xhat_o, rstd_o, ln_w, D)
            # The state update (or, for a last incomplete mini-batch, the returned step sums).
            if start + mini_batch <= T:
                ds_w1 = -c_last * dw1
                ds_b1 = -c_last * db1
                ds_w2 = -c_last * dw2
                ds_b2 = -c_last * db2
                dc_last = (tl.sum(tl.sum(dw1 * s_w1, 1), 0) + tl.sum(db1 * s_b1, 0)
                           + tl.sum(tl.sum(dw2 * s_w2, 1), 0) + tl.sum(db2 * s_b2, 0))
                dc += tl.where(rows == mini_batch - 1, -dc_last, 0.0)
            else:
                ds_w1 = tl.load(dacc_w1 + n * D * HID + dh)
                ds_b1 = tl.load(dacc_b1 + n * HID + hid)
                ds_w2 = tl.load(dacc_w2 + n * HID * D + hd)
                ds_b2 = tl.load(dacc_b2 + n * D + cols)
            # zb2 = xb2 W2 + b2 - (eta * xx) g2, xx = xb2 x2^T + 1
            dq = dout
            dxb2 = tl.dot(dzb2, load_transposed(w2_ptr, HID, D), input_precision=PREC)
            dw2 += tl.dot(tl.trans(xb2), dzb2, input_precision=PREC)
            db2 += tl.sum(dzb2, 0)
            da2 = -tl.dot(dzb2, tl.trans(g2), input_precision=PREC)
            dg2 = -tl.dot(tl.trans(eta * xx), dzb2, input_precision=PREC)
            deta = da2 * xx
            dxx = da2 * eta
            dxb2 += tl.dot(dxx, x2, input_precision=PREC)
            dx2 = tl.dot(tl.trans(dxx), xb2, input_precision=PREC)
            # xb2 = gelu(zb1); zb1 = q W1 + b1 - (eta * qk) g1, qk = q k^T + 1
            gelu_b1, _ = gelu_tanh_grads(zb1)
            dzb1 = dxb2 * gelu_b1
            dq += tl.dot(dzb1, load_transposed(w1_ptr, D, HID), input_precision=PREC)
            dw1 += tl.dot(tl.trans(q), dzb1, input_precision=PREC)
            db1 += tl.sum(dzb1, 0)
            da1 = -tl.dot(dzb1, tl.trans(g1), input_precision=PREC)
            dg1 = -tl.dot(tl.trans(eta * qk), dzb1, input_precision=PREC)
            deta += da1 * qk
            dqk = da1 * eta
            dq += tl.dot(dqk, k, input_precision=PREC)
            dk = tl.dot(tl.trans(dqk), q, input_precision=PREC)
            # eta[i, j] = c[i] lr[j] for j <= i
            deta = tl.where(rows[:, None] >= rows[None, :], deta, 0.0)
            dlr = tl.sum(deta * c[:, None], 0)
            dc += tl.sum(deta * lr[None, :], 1)
            # The lr-weighted step sums of both layers.
            g1_ds = tl.dot(g1, tl.trans(ds_w1), input_precision=PREC)
            dk += lr[:, None] * g1_ds
            dg1 += lr[:, None] * (tl.dot(k, ds_w1, input_precision=PREC) + ds_b1[None, :])
            dlr += tl.sum(k * g1_ds, 1) + tl.sum(g1 * ds_b1[None, :], 1)
            g2_ds = tl.dot(g2, tl.trans(ds_w2), input_precision=PREC)
            dx2 += lr[:, None] * g2_ds
            dg2 += lr[:, None] * (tl.dot(x2, ds_w2, input_precision=PREC) + ds_b2[None, :])
            dlr += tl.sum(x2 * g2_ds, 1) + tl.sum(g2 * ds_b2[None, :], 1)
            # g1 = (g2 W2^T) * gelu'(z1)
            dm = dg1 * gelu1
            dz1 = dg1 * g2_w2 * gelu2
            dg2 += tl.dot(dm, load_matrix(w2_ptr, HID, D), input_precision=PREC)
            dw2 += tl.dot(tl.trans(dm), g2, input_precision=PREC)
            # g2 = dl/dz2 at z2 = x2 W2 + b2, x2 = gelu(z1), z1 = k W1 + b1
            dz2, dtarget, dln_w_rows, dln_b_rows = ln_l2_grad_backward(dg2, xhat_k, rstd_k, gx_k, m_k, target,
                                                                       ln_w, ln_b, D)
            dln_w += tl.sum(dln_w_rows, 0)
            dln_b += tl.sum(dln_b_rows, 0)
            dx2 += tl.dot(dz2, load_transposed(w2_ptr, HID, D), input_precision=PREC)
            dw2 += tl.dot(tl.trans(x2), dz2, input_precision=PREC)
            db2 += tl.sum(dz2, 0)
            dz1 += dx2 * gelu1
            dk += tl.dot(dz1, load_transposed(w1_ptr, D, HID), input_precision=PREC) - dtarget
            dw1 += tl.dot(tl.trans(k), dz1, input_precision=PREC)
            db1 += tl.sum(dz1, 0)
            store_rows(dq_ptr + seq, dq, start, T, mini_batch, D, BL)
            store_rows(dk_ptr + seq, dk, start, T, mini_batch, D, BL)
            store_rows(dv_ptr + seq, dtarget, start, T, mini_batch, D, BL)
            store_vector(dlr_ptr + n * T, dlr, start, T, mini_batch, BL)
    tl.store(dw1_0 + n * D * HID + dh, dw1)
    tl.store(db1_0 + n * HID + hid, db1)
    tl.store(dw2_0 + n * HID * D + hd, dw2)
    tl.store(db2_0 + n * D + cols, db2)
    tl.store(dln_w_ptr + n * D + cols, dln_w)
    tl.store(dln_b_ptr + n * D + cols, dln_b)
    tl.store(dcoeff_ptr + n * BL + rows, dc)
