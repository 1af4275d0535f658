"""TTT-MLP forward and backward kernels: one program per (batch, head), the hidden width in chunks.

Shape legend as in ttt_linear/kernels.py, plus HID = the inner MLP's hidden width (4 D) and
HC = the hidden chunk (a divisor of HID; HID / HC chunks). Per mini-batch (kernels/README.md has
the derivation and the memory budget):
    keys:    Z1 = K W1 + b1, X2 = gelu(Z1), Z2 = X2 W2 + b2, G2 = dl/dZ2, G1 = (G2 W2^T) gelu'(Z1)
    queries: Zb1 = Q W1 + b1 - A1 G1, Xb2 = gelu(Zb1), Zb2 = Xb2 W2 + b2 - A2 G2, out = Q + LN(Zb2)
    with A1 = eta * (Q K^T + 1), A2 = eta * (Xb2 X2^T + 1); each layer steps by c[b-1] x its lr-weighted sums.

Every [*, HID] quantity is made and used HC hidden units at a time. W1 [D, HID], b1 [HID] and
W2 [HID, D] live in per-program fp32 buffers, and each product reads the [D, HC] or [HC, D] slice
it needs, so no operand of a tl.dot is larger than D x HC (a whole W1 or W2 as an operand made
the backward need 545 KiB of shared memory at D = 64). Hidden unit h meets only column h of W1
and b1 and row h of W2, so a chunk's slices are stepped as soon as the chunk has been used. Z2
sums over every chunk and G2 needs all of Z2, so a mini-batch passes over the chunks twice.

A mini-batch whose reset flag is set starts from its head's initial weights, copied into the
state buffer (forward) or the replay scratch (backward); in the backward, the carried gradient of
its starting state moves into the initial weights' gradient buffers, leaving zero for the
previous mini-batch.
"""

import triton
import triton.language as tl

from megatron_ttt.kernels.common import (
    block_inputs,
    causal_lr,
    gelu_tanh,
    gelu_tanh_grads,
    head_constants,
    ln_l2_grad,
    ln_l2_grad_backward,
    load_rows,
    residual_layer_norm,
    residual_layer_norm_backward,
    restart_gradient,
    restarts,
    store_rows,
    store_vector,
)


@triton.jit
def _w1_chunk(ch, D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr):
    """Offsets of columns ch * HC .. of a row-major [D, HID] matrix: a [D, HC] tile."""
    return tl.arange(0, D)[:, None] * HID + ch * HC + tl.arange(0, HC)[None, :]


@triton.jit
def _b1_chunk(ch, HC: tl.constexpr):
    return ch * HC + tl.arange(0, HC)


@triton.jit
def _w2_chunk(ch, D: tl.constexpr, HC: tl.constexpr):
    """Offsets of rows ch * HC .. of a row-major [HID, D] matrix: a [HC, D] tile."""
    return (ch * HC + tl.arange(0, HC))[:, None] * D + tl.arange(0, D)[None, :]


@triton.jit
def _rows_chunk(ch, HID: tl.constexpr, HC: tl.constexpr, BL: tl.constexpr):
    """Offsets of columns ch * HC .. of a row-major [BL, HID] matrix."""
    return tl.arange(0, BL)[:, None] * HID + ch * HC + tl.arange(0, HC)[None, :]


@triton.jit
def _copy_state(src_w1, src_b1, src_w2, dst_w1, dst_b1, dst_w2, D: tl.constexpr, HID: tl.constexpr,
                HC: tl.constexpr):
    """Copy (W1, b1, W2) between per-program buffers. The barriers order the program's threads
    around the write: every earlier read of dst before it, every later read after it (Triton
    orders shared memory by itself, not global memory)."""
    tl.debug_barrier()
    for ch in range(HID // HC):
        _copy_chunk(src_w1, src_b1, src_w2, dst_w1, dst_b1, dst_w2, ch, D, HID, HC)
    tl.debug_barrier()


@triton.jit
def _copy_chunk(src_w1, src_b1, src_w2, dst_w1, dst_b1, dst_w2, ch, D: tl.constexpr, HID: tl.constexpr,
                HC: tl.constexpr):
    tl.store(dst_w1 + _w1_chunk(ch, D, HID, HC), tl.load(src_w1 + _w1_chunk(ch, D, HID, HC)))
    tl.store(dst_b1 + _b1_chunk(ch, HC), tl.load(src_b1 + _b1_chunk(ch, HC)))
    tl.store(dst_w2 + _w2_chunk(ch, D, HC), tl.load(src_w2 + _w2_chunk(ch, D, HC)))


@triton.jit
def _restart_state(init_w1, init_b1, init_w2, init_b2, w1_ptr, b1_ptr, w2_ptr, b2, reset, D: tl.constexpr,
                   HID: tl.constexpr, HC: tl.constexpr):
    """Where reset (a scalar), overwrite the state buffers (W1, b1, W2) with the head's initial
    weights and return its initial b2; else leave them and return b2. Without a restart the copy
    loop runs no chunk: a loop of zero trips rather than an `if` around the stores (stores inside
    one fail Triton 3.6's sm_90 pipeliner). Barriers as in _copy_state."""
    tl.debug_barrier()
    for ch in range(tl.where(reset, HID // HC, 0)):
        _copy_chunk(init_w1, init_b1, init_w2, w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
    tl.debug_barrier()
    if reset:
        b2 = tl.load(init_b2 + tl.arange(0, D))
    return b2


@triton.jit
def _restart_gradients(dw1_ptr, db1_ptr, dw2_ptr, di_w1, di_b1, di_w2, reset, D: tl.constexpr,
                       HID: tl.constexpr, HC: tl.constexpr):
    """Where reset (a scalar), add the carried gradient (dW1, db1, dW2) of the state a mini-batch
    starts from to the initial weights' gradient buffers and zero it, so none flows into the
    previous mini-batch; else touch nothing (a loop of zero trips, as in _restart_state)."""
    tl.debug_barrier()
    for ch in range(tl.where(reset, HID // HC, 0)):
        _move_gradient(dw1_ptr, di_w1, _w1_chunk(ch, D, HID, HC))
        _move_gradient(db1_ptr, di_b1, _b1_chunk(ch, HC))
        _move_gradient(dw2_ptr, di_w2, _w2_chunk(ch, D, HC))
    tl.debug_barrier()


@triton.jit
def _move_gradient(src, dst, offsets):
    """dst += src, then src = 0. The same thread reads and writes each element of dst, which
    nothing else touches, so repeated restarts need no barrier for it."""
    dx = tl.load(src + offsets)
    tl.store(dst + offsets, tl.load(dst + offsets) + dx)
    tl.store(src + offsets, tl.zeros_like(dx))


@triton.jit
def _key_outputs(k, target, w1_ptr, b1_ptr, w2_ptr, b2, ln_w, ln_b, D: tl.constexpr, HID: tl.constexpr,
                 HC: tl.constexpr, BL: tl.constexpr, PREC: tl.constexpr):
    """First pass: Z2 = gelu(K W1 + b1) W2 + b2 over every chunk, then (G2, xhat, rstd, gx, m) of
    ln_l2_grad(Z2)."""
    z2 = tl.zeros([BL, D], tl.float32) + b2[None, :]
    for ch in range(HID // HC):
        z1 = (tl.dot(k, tl.load(w1_ptr + _w1_chunk(ch, D, HID, HC)), input_precision=PREC)
              + tl.load(b1_ptr + _b1_chunk(ch, HC))[None, :])
        z2 += tl.dot(gelu_tanh(z1), tl.load(w2_ptr + _w2_chunk(ch, D, HC)), input_precision=PREC)
    return ln_l2_grad(z2, target, ln_w, ln_b, D)


@triton.jit
def _key_chunk(k, g2, w1, b1, w2, PREC: tl.constexpr):
    """One chunk of the key path: (X2, G1, G2 W2^T, gelu'(Z1), gelu''(Z1))."""
    z1 = tl.dot(k, w1, input_precision=PREC) + b1[None, :]
    g2_w2 = tl.dot(g2, tl.trans(w2), input_precision=PREC)
    gelu1, gelu2 = gelu_tanh_grads(z1)
    return gelu_tanh(z1), g2_w2 * gelu1, g2_w2, gelu1, gelu2


@triton.jit
def _query_chunk(q, a1, g1, w1, b1, PREC: tl.constexpr):
    """One chunk of the query path's first layer: Zb1."""
    return tl.dot(q, w1, input_precision=PREC) + b1[None, :] - tl.dot(a1, g1, input_precision=PREC)


@triton.jit
def _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr):
    """The [D, HC], [HC], [HC, D] slices of (W1, b1, W2) for chunk ch."""
    return (tl.load(w1_ptr + _w1_chunk(ch, D, HID, HC)), tl.load(b1_ptr + _b1_chunk(ch, HC)),
            tl.load(w2_ptr + _w2_chunk(ch, D, HC)))


@triton.jit
def _store_chunk(w1_ptr, b1_ptr, w2_ptr, w1, b1, w2, ch, D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr,
                 write=True):
    """Overwrite chunk ch of (W1, b1, W2) in place, after every thread has read the old values;
    nothing where `write` (a scalar condition) is false."""
    tl.debug_barrier()
    tl.store(w1_ptr + _w1_chunk(ch, D, HID, HC), w1, mask=tl.full([D, HC], 1, tl.int1) & write)
    tl.store(b1_ptr + _b1_chunk(ch, HC), b1, mask=tl.full([HC], 1, tl.int1) & write)
    tl.store(w2_ptr + _w2_chunk(ch, D, HC), w2, mask=tl.full([HC, D], 1, tl.int1) & write)


@triton.jit
def ttt_mlp_fwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, w1_0, b1_0, w2_0, b2_0,
    resets_ptr, init_w1, init_b1, init_w2, init_b2,
    z_ptr, w1_out, b1_out, w2_out, b2_out, acc_w1, acc_b1, acc_w2, acc_b2, ck_w1, ck_b1, ck_w2, ck_b2,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr, BL: tl.constexpr, G: tl.constexpr,
    PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    seq = n * T * D
    # The current W1, b1, W2 live in the output buffers, stepped in place chunk by chunk.
    w1_ptr = w1_out + n * D * HID
    b1_ptr = b1_out + n * HID
    w2_ptr = w2_out + n * HID * D
    _copy_state(w1_0 + n * D * HID, b1_0 + n * HID, w2_0 + n * HID * D, w1_ptr, b1_ptr, w2_ptr, D, HID, HC)
    b2 = tl.load(b2_0 + n * D + cols)
    ln_w, ln_b, c, c_last = head_constants(ln_w_ptr, ln_b_ptr, coeff_ptr, n, H, mini_batch, D, BL)
    n_ckpt = (n_blocks + G - 1) // G
    head = n % H
    for blk in range(n_blocks):
        # The checkpoint is the state carried into the group; whoever runs a mini-batch applies its reset.
        if blk % G == 0:
            slot = n * n_ckpt + blk // G
            _copy_state(w1_ptr, b1_ptr, w2_ptr, ck_w1 + slot * D * HID, ck_b1 + slot * HID, ck_w2 + slot * HID * D,
                        D, HID, HC)
            tl.store(ck_b2 + slot * D + cols, b2)
        b2 = _restart_state(init_w1 + head * D * HID, init_b1 + head * HID, init_w2 + head * HID * D,
                            init_b2 + head * D, w1_ptr, b1_ptr, w2_ptr, b2, restarts(resets_ptr, n, H, blk, n_blocks),
                            D, HID, HC)
        start = blk * mini_batch
        complete = start + mini_batch <= T
        # Only the last mini-batch can be incomplete: its state is not stepped (as the twin).
        step = tl.where(complete, c_last, 0.0)
        q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                        mini_batch, D, BL)
        g2 = _key_outputs(k, target, w1_ptr, b1_ptr, w2_ptr, b2, ln_w, ln_b, D, HID, HC, BL, PREC)[0]
        eta = causal_lr(c, lr, BL)
        a1 = eta * (tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0)
        lg2 = g2 * lr[:, None]
        zb2 = tl.zeros([BL, D], tl.float32) + b2[None, :]
        xx = tl.zeros([BL, BL], tl.float32)
        for ch in range(HID // HC):
            w1, b1, w2 = _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
            x2, g1 = _key_chunk(k, g2, w1, b1, w2, PREC)[:2]
            xb2 = gelu_tanh(_query_chunk(q, a1, g1, w1, b1, PREC))
            xx += tl.dot(xb2, tl.trans(x2), input_precision=PREC)
            zb2 += tl.dot(xb2, w2, input_precision=PREC)
            lg1 = g1 * lr[:, None]
            s_w1 = tl.dot(tl.trans(k), lg1, input_precision=PREC)
            s_b1 = tl.sum(lg1, 0)
            s_w2 = tl.dot(tl.trans(x2), lg2, input_precision=PREC)
            # Step a complete mini-batch's chunk; keep an incomplete one's step sums (returned). Masked
            # stores, not an `if` around them: Triton 3.6's sm_90 pipeliner fails on that.
            _store_chunk(w1_ptr, b1_ptr, w2_ptr, w1 - step * s_w1, b1 - step * s_b1, w2 - step * s_w2, ch, D, HID, HC)
            _store_chunk(acc_w1 + n * D * HID, acc_b1 + n * HID, acc_w2 + n * HID * D, s_w1, s_b1, s_w2, ch, D, HID,
                         HC, write=not complete)
        zb2 -= tl.dot(eta * (xx + 1.0), g2, input_precision=PREC)
        out = residual_layer_norm(q, zb2, ln_w, ln_b, D)[0]
        store_rows(z_ptr + seq, out, start, T, mini_batch, D, BL)
        b2 = b2 - step * tl.sum(lg2, 0)
        tl.store(acc_b2 + n * D + cols, tl.sum(lg2, 0), mask=tl.full([D], 1, tl.int1) & (not complete))
        tl.debug_barrier()
    tl.store(b2_out + n * D + cols, b2)


@triton.jit
def _replay(q_ptr, k_ptr, v_ptr, lr_ptr, seq, n, H, c, c_last, ln_w, ln_b, ck_w1, ck_b1, ck_w2, ck_b2, resets_ptr,
            init_w1, init_b1, init_w2, init_b2, sc_w1, sc_b1, sc_w2, sc_b2, slot, first, count, T, mini_batch,
            n_blocks, D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr, BL: tl.constexpr, G: tl.constexpr,
            PREC: tl.constexpr):
    """Replay a group's mini-batches from its checkpoint, with their resets: the state at each one's
    start into the scratch slots 0 .. count - 1 (all but the group's last mini-batch are complete).
    init_* point at the head's initial weights."""
    _copy_state(ck_w1 + slot * D * HID, ck_b1 + slot * HID, ck_w2 + slot * HID * D, sc_w1 + n * G * D * HID,
                sc_b1 + n * G * HID, sc_w2 + n * G * HID * D, D, HID, HC)
    cols = tl.arange(0, D)
    b2 = tl.load(ck_b2 + slot * D + cols)
    for j in range(count):
        w1_ptr = sc_w1 + (n * G + j) * D * HID
        b1_ptr = sc_b1 + (n * G + j) * HID
        w2_ptr = sc_w2 + (n * G + j) * HID * D
        b2 = _restart_state(init_w1, init_b1, init_w2, init_b2, w1_ptr, b1_ptr, w2_ptr, b2,
                            restarts(resets_ptr, n, H, first + j, n_blocks), D, HID, HC)
        tl.store(sc_b2 + (n * G + j) * D + cols, b2)
        if j < count - 1:
            k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T,
                                          (first + j) * mini_batch, T, mini_batch, D, BL)[1:]
            g2 = _key_outputs(k, target, w1_ptr, b1_ptr, w2_ptr, b2, ln_w, ln_b, D, HID, HC, BL, PREC)[0]
            lg2 = g2 * lr[:, None]
            for ch in range(HID // HC):
                w1, b1, w2 = _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
                x2, g1 = _key_chunk(k, g2, w1, b1, w2, PREC)[:2]
                lg1 = g1 * lr[:, None]
                # Slot j + 1 is not read before the barrier below.
                _store_chunk(w1_ptr + D * HID, b1_ptr + HID, w2_ptr + HID * D,
                             w1 - c_last * tl.dot(tl.trans(k), lg1, input_precision=PREC),
                             b1 - c_last * tl.sum(lg1, 0),
                             w2 - c_last * tl.dot(tl.trans(x2), lg2, input_precision=PREC), ch, D, HID, HC)
            tl.debug_barrier()
            b2 = b2 - c_last * tl.sum(lg2, 0)


@triton.jit
def ttt_mlp_bwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, coeff_ptr, ln_w_ptr, ln_b_ptr, ck_w1, ck_b1, ck_w2, ck_b2,
    resets_ptr, init_w1, init_b1, init_w2, init_b2,
    dz_ptr, dw1_out, db1_out, dw2_out, db2_out, dacc_w1, dacc_b1, dacc_w2, dacc_b2,
    dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dw1_0, db1_0, dw2_0, db2_0, dln_w_ptr, dln_b_ptr, dcoeff_ptr,
    di_w1, di_b1, di_w2, di_b2, sc_w1, sc_b1, sc_w2, sc_b2, sc_dz1,
    T, H, mini_batch, n_blocks,
    D: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr, BL: tl.constexpr, G: tl.constexpr,
    PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, D)
    rows = tl.arange(0, BL)
    seq = n * T * D
    ln_w, ln_b, c, c_last = head_constants(ln_w_ptr, ln_b_ptr, coeff_ptr, n, H, mini_batch, D, BL)
    # The gradient of (W1, b1, W2) carried backwards lives in the output buffers, updated in place.
    dw1_ptr = dw1_0 + n * D * HID
    db1_ptr = db1_0 + n * HID
    dw2_ptr = dw2_0 + n * HID * D
    _copy_state(dw1_out + n * D * HID, db1_out + n * HID, dw2_out + n * HID * D, dw1_ptr, db1_ptr, dw2_ptr,
                D, HID, HC)
    db2 = tl.load(db2_out + n * D + cols)
    # dZ1 of the current mini-batch without its part through Z2 (known only after the first pass).
    dz1_ptr = sc_dz1 + n * BL * HID
    dln_w = tl.zeros([D], tl.float32)
    dln_b = tl.zeros([D], tl.float32)
    dc = tl.zeros([BL], tl.float32)
    n_ckpt = (n_blocks + G - 1) // G
    head = n % H
    for group_back in range(n_ckpt):
        group = n_ckpt - 1 - group_back
        first = group * G
        count = tl.minimum(G, n_blocks - first)
        _replay(q_ptr, k_ptr, v_ptr, lr_ptr, seq, n, H, c, c_last, ln_w, ln_b, ck_w1, ck_b1, ck_w2, ck_b2, resets_ptr,
                init_w1 + head * D * HID, init_b1 + head * HID, init_w2 + head * HID * D, init_b2 + head * D,
                sc_w1, sc_b1, sc_w2, sc_b2, n * n_ckpt + group, first, count, T, mini_batch, n_blocks, D, HID, HC,
                BL, G, PREC)
        for j_back in range(count):
            j = count - 1 - j_back
            start = (first + j) * mini_batch
            complete = start + mini_batch <= T
            w1_ptr = sc_w1 + (n * G + j) * D * HID
            b1_ptr = sc_b1 + (n * G + j) * HID
            w2_ptr = sc_w2 + (n * G + j) * HID * D
            b2 = tl.load(sc_b2 + (n * G + j) * D + cols)
            q, k, target, lr = block_inputs(q_ptr + seq, k_ptr + seq, v_ptr + seq, lr_ptr + n * T, start, T,
                                            mini_batch, D, BL)
            dout = load_rows(dz_ptr + seq, start, T, mini_batch, D, BL)
            # Recompute the mini-batch up to its output.
            g2, xhat_k, rstd_k, gx_k, m_k = _key_outputs(k, target, w1_ptr, b1_ptr, w2_ptr, b2, ln_w, ln_b, D, HID,
                                                         HC, BL, PREC)
            eta = causal_lr(c, lr, BL)
            qk = tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0
            a1 = eta * qk
            zb2 = tl.zeros([BL, D], tl.float32) + b2[None, :]
            xx = tl.zeros([BL, BL], tl.float32) + 1.0
            for ch in range(HID // HC):
                w1, b1, w2 = _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
                x2, g1 = _key_chunk(k, g2, w1, b1, w2, PREC)[:2]
                xb2 = gelu_tanh(_query_chunk(q, a1, g1, w1, b1, PREC))
                xx += tl.dot(xb2, tl.trans(x2), input_precision=PREC)
                zb2 += tl.dot(xb2, w2, input_precision=PREC)
            zb2 -= tl.dot(eta * xx, g2, input_precision=PREC)
            xhat_o, rstd_o = residual_layer_norm(q, zb2, ln_w, ln_b, D)[1:]
            # out = q + LN(zb2)
            dln_w += tl.sum(dout * xhat_o, 0)
            dln_b += tl.sum(dout, 0)
            dzb2 = residual_layer_norm_backward(dout, xhat_o, rstd_o, ln_w, D)
            # The state update (or, for a last incomplete mini-batch, the returned step sums): b2 here,
            # W1, b1, W2 chunk by chunk below.
            lg2 = g2 * lr[:, None]
            s_b2 = tl.sum(lg2, 0)
            if complete:
                ds_b2 = -c_last * db2
            else:
                ds_b2 = tl.load(dacc_b2 + n * D + cols)
            dc_last = tl.sum(db2 * s_b2, 0)
            # zb2 = xb2 W2 + b2 - (eta * xx) g2, xx = xb2 x2^T + 1
            dq = dout
            dk = tl.zeros([BL, D], tl.float32)
            db2 += tl.sum(dzb2, 0)
            da2 = -tl.dot(dzb2, tl.trans(g2), input_precision=PREC)
            dg2 = -tl.dot(tl.trans(eta * xx), dzb2, input_precision=PREC) + lr[:, None] * ds_b2[None, :]
            dlr = tl.sum(g2 * ds_b2[None, :], 1)
            deta = da2 * xx
            dxx = da2 * eta
            da1 = tl.zeros([BL, BL], tl.float32)
            for ch in range(HID // HC):
                w1, b1, w2 = _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
                x2, g1, g2_w2, gelu1, gelu2 = _key_chunk(k, g2, w1, b1, w2, PREC)
                zb1 = _query_chunk(q, a1, g1, w1, b1, PREC)
                xb2 = gelu_tanh(zb1)
                lg1 = g1 * lr[:, None]
                s_w1 = tl.dot(tl.trans(k), lg1, input_precision=PREC)
                s_b1 = tl.sum(lg1, 0)
                s_w2 = tl.dot(tl.trans(x2), lg2, input_precision=PREC)
                dw1, db1, dw2 = _load_chunk(dw1_ptr, db1_ptr, dw2_ptr, ch, D, HID, HC)
                if complete:
                    ds_w1 = -c_last * dw1
                    ds_b1 = -c_last * db1
                    ds_w2 = -c_last * dw2
                else:
                    ds_w1, ds_b1, ds_w2 = _load_chunk(dacc_w1 + n * D * HID, dacc_b1 + n * HID,
                                                      dacc_w2 + n * HID * D, ch, D, HID, HC)
                dc_last += tl.sum(tl.sum(dw1 * s_w1, 1), 0) + tl.sum(db1 * s_b1, 0) + tl.sum(tl.sum(dw2 * s_w2, 1), 0)
                # zb2's chunk: xb2 W2 and the xx = xb2 x2^T + 1 of A2
                dxb2 = tl.dot(dzb2, tl.trans(w2), input_precision=PREC) + tl.dot(dxx, x2, input_precision=PREC)
                dw2 += tl.dot(tl.trans(xb2), dzb2, input_precision=PREC)
                dx2 = tl.dot(tl.trans(dxx), xb2, input_precision=PREC)
                # xb2 = gelu(zb1); zb1 = q W1 + b1 - a1 g1
                gelu_b1 = gelu_tanh_grads(zb1)[0]
                dzb1 = dxb2 * gelu_b1
                dq += tl.dot(dzb1, tl.trans(w1), input_precision=PREC)
                dw1 += tl.dot(tl.trans(q), dzb1, input_precision=PREC)
                db1 += tl.sum(dzb1, 0)
                da1 -= tl.dot(dzb1, tl.trans(g1), input_precision=PREC)
                dg1 = -tl.dot(tl.trans(a1), dzb1, input_precision=PREC)
                # The lr-weighted step sums of both layers.
                g1_ds = tl.dot(g1, tl.trans(ds_w1), input_precision=PREC)
                dk += lr[:, None] * g1_ds
                dg1 += lr[:, None] * (tl.dot(k, ds_w1, input_precision=PREC) + ds_b1[None, :])
                dlr += tl.sum(k * g1_ds, 1) + tl.sum(g1 * ds_b1[None, :], 1)
                g2_ds = tl.dot(g2, tl.trans(ds_w2), input_precision=PREC)
                dx2 += lr[:, None] * g2_ds
                dg2 += lr[:, None] * tl.dot(x2, ds_w2, input_precision=PREC)
                dlr += tl.sum(x2 * g2_ds, 1)
                # g1 = (g2 W2^T) * gelu'(z1)
                dm = dg1 * gelu1
                dg2 += tl.dot(dm, w2, input_precision=PREC)
                dw2 += tl.dot(tl.trans(dm), g2, input_precision=PREC)
                tl.store(dz1_ptr + _rows_chunk(ch, HID, HC, BL), dg1 * g2_w2 * gelu2 + dx2 * gelu1)
                _store_chunk(dw1_ptr, db1_ptr, dw2_ptr, dw1, db1, dw2, ch, D, HID, HC)
            if complete:
                dc += tl.where(rows == mini_batch - 1, -dc_last, 0.0)
            # A1 = eta * qk, qk = q k^T + 1; eta[i, j] = c[i] lr[j] for j <= i
            deta += da1 * qk
            dqk = da1 * eta
            dq += tl.dot(dqk, k, input_precision=PREC)
            dk += tl.dot(tl.trans(dqk), q, input_precision=PREC)
            deta = tl.where(rows[:, None] >= rows[None, :], deta, 0.0)
            dlr += tl.sum(deta * c[:, None], 0)
            dc += tl.sum(deta * lr[None, :], 1)
            # g2 = dl/dz2 at z2 = x2 W2 + b2: the second pass adds the part of dZ1 through z2.
            dz2, dtarget, dln_w_rows, dln_b_rows = ln_l2_grad_backward(dg2, xhat_k, rstd_k, gx_k, m_k, target,
                                                                       ln_w, ln_b, D)
            dln_w += tl.sum(dln_w_rows, 0)
            dln_b += tl.sum(dln_b_rows, 0)
            db2 += tl.sum(dz2, 0)
            tl.debug_barrier()
            for ch in range(HID // HC):
                w1, b1, w2 = _load_chunk(w1_ptr, b1_ptr, w2_ptr, ch, D, HID, HC)
                z1 = tl.dot(k, w1, input_precision=PREC) + b1[None, :]
                gelu1 = gelu_tanh_grads(z1)[0]
                dz1 = (tl.load(dz1_ptr + _rows_chunk(ch, HID, HC, BL))
                       + tl.dot(dz2, tl.trans(w2), input_precision=PREC) * gelu1)
                dk += tl.dot(dz1, tl.trans(w1), input_precision=PREC)
                dw1, db1, dw2 = _load_chunk(dw1_ptr, db1_ptr, dw2_ptr, ch, D, HID, HC)
                _store_chunk(dw1_ptr, db1_ptr, dw2_ptr, dw1 + tl.dot(tl.trans(k), dz1, input_precision=PREC),
                             db1 + tl.sum(dz1, 0), dw2 + tl.dot(tl.trans(gelu_tanh(z1)), dz2, input_precision=PREC),
                             ch, D, HID, HC)
            # dW1, db1, dW2, db2: the gradient of the state this mini-batch starts from.
            reset = restarts(resets_ptr, n, H, first + j, n_blocks)
            _restart_gradients(dw1_ptr, db1_ptr, dw2_ptr, di_w1 + n * D * HID, di_b1 + n * HID, di_w2 + n * HID * D,
                               reset, D, HID, HC)
            db2 = restart_gradient(db2, reset, di_b2 + n * D, cols)
            store_rows(dq_ptr + seq, dq, start, T, mini_batch, D, BL)
            store_rows(dk_ptr + seq, dk - dtarget, start, T, mini_batch, D, BL)
            store_rows(dv_ptr + seq, dtarget, start, T, mini_batch, D, BL)
            store_vector(dlr_ptr + n * T, dlr, start, T, mini_batch, BL)
    tl.store(db2_0 + n * D + cols, db2)
    tl.store(dln_w_ptr + n * D + cols, dln_w)
    tl.store(dln_b_ptr + n * D + cols, dln_b)
    tl.store(dcoeff_ptr + n * BL + rows, dc)
