"""Triton device functions every TTT kernel shares: tiles, LayerNorms, GELU and their backwards.

Every function works on fp32 register tiles of one (batch, head) program: token tiles are
[BL, D] (BL >= 16 rows, the mini-batch padded to what `tl.dot` accepts), row vectors [D].
The math is that of `megatron_ttt.ops.inner`; kernels/README.md derives the backwards.
"""

import triton
import triton.language as tl

LN_EPS = tl.constexpr(1e-6)
"""The inner LayerNorm's epsilon (megatron_ttt.ops.inner.LN_EPS)."""
GELU_C = tl.constexpr(0.7978845608028654)
"""sqrt(2 / pi), the tanh-GELU constant."""
GELU_A = tl.constexpr(0.044715)
# Module constants go on the right of an operator: constexpr * tensor stays a constexpr in the interpreter.


@triton.jit
def load_rows(ptr, start, T, mini_batch, D: tl.constexpr, BL: tl.constexpr):
    """The fp32 [BL, D] tile of rows start .. start + mini_batch of a [T, D] matrix; zeros elsewhere."""
    rows = tl.arange(0, BL)
    cols = tl.arange(0, D)
    valid = (rows < mini_batch) & (start + rows < T)
    x = tl.load(ptr + (start + rows)[:, None] * D + cols[None, :], mask=valid[:, None], other=0.0)
    return x.to(tl.float32)


@triton.jit
def store_rows(ptr, x, start, T, mini_batch, D: tl.constexpr, BL: tl.constexpr):
    rows = tl.arange(0, BL)
    cols = tl.arange(0, D)
    valid = (rows < mini_batch) & (start + rows < T)
    tl.store(ptr + (start + rows)[:, None] * D + cols[None, :], x.to(ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit
def load_vector(ptr, start, T, mini_batch, BL: tl.constexpr):
    """The fp32 [BL] slice start .. start + mini_batch of a [T] vector; zeros elsewhere."""
    rows = tl.arange(0, BL)
    valid = (rows < mini_batch) & (start + rows < T)
    return tl.load(ptr + start + rows, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def store_vector(ptr, x, start, T, mini_batch, BL: tl.constexpr):
    rows = tl.arange(0, BL)
    valid = (rows < mini_batch) & (start + rows < T)
    tl.store(ptr + start + rows, x.to(ptr.dtype.element_ty), mask=valid)


@triton.jit
def head_constants(ln_w_ptr, ln_b_ptr, coeff_ptr, n, H, mini_batch, D: tl.constexpr, BL: tl.constexpr):
    """What every mini-batch of program n shares: its head's inner LayerNorm weight and bias [D]
    in fp32, the token coefficients c [BL] (zeros past the mini-batch) and c[b - 1]."""
    cols = tl.arange(0, D)
    rows = tl.arange(0, BL)
    ln_w = tl.load(ln_w_ptr + (n % H) * D + cols).to(tl.float32)
    ln_b = tl.load(ln_b_ptr + (n % H) * D + cols).to(tl.float32)
    c = tl.load(coeff_ptr + rows, mask=rows < mini_batch, other=0.0)
    return ln_w, ln_b, c, tl.load(coeff_ptr + mini_batch - 1)


@triton.jit
def block_inputs(q_ptr, k_ptr, v_ptr, lr_ptr, start, T, mini_batch, D: tl.constexpr, BL: tl.constexpr):
    """(q, k, v - k, lr) of one mini-batch: the tiles every kernel starts from."""
    q = load_rows(q_ptr, start, T, mini_batch, D, BL)
    k = load_rows(k_ptr, start, T, mini_batch, D, BL)
    target = load_rows(v_ptr, start, T, mini_batch, D, BL) - k
    lr = load_vector(lr_ptr, start, T, mini_batch, BL)
    return q, k, target, lr


@triton.jit
def matrix_offsets(R: tl.constexpr, C: tl.constexpr):
    """Offsets of a row-major [R, C] matrix."""
    return tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]


@triton.jit
def load_matrix(ptr, R: tl.constexpr, C: tl.constexpr):
    """A row-major [R, C] fp32 matrix."""
    return tl.load(ptr + matrix_offsets(R, C))


@triton.jit
def load_transposed(ptr, R: tl.constexpr, C: tl.constexpr):
    """The [C, R] transpose of a row-major [R, C] fp32 matrix, read transposed."""
    return tl.load(ptr + tl.arange(0, C)[:, None] + tl.arange(0, R)[None, :] * C)


@triton.jit
def normalize(x, D: tl.constexpr):
    """((x - mean) * rstd, rstd) over the last dim of [BL, D]; rstd is [BL]."""
    centered = x - (tl.sum(x, 1) / D)[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 1) / D + LN_EPS)
    return centered * rstd[:, None], rstd


@triton.jit
def project_out(u, xhat, D: tl.constexpr):
    """u - mean(u) - xhat * mean(u * xhat), row by row: the LayerNorm backward without rstd."""
    return u - (tl.sum(u, 1) / D)[:, None] - xhat * (tl.sum(u * xhat, 1) / D)[:, None]


@triton.jit
def ln_l2_grad(z, target, ln_w, ln_b, D: tl.constexpr):
    """dl/dz of l = 1/2 ||LN(z) - target||^2 per row, and what its backward needs.

    Returns (grad, xhat, rstd, gx, m): gx = dl/dxhat, m = mean(gx * xhat) per row.
    """
    xhat, rstd = normalize(z, D)
    gx = (xhat * ln_w[None, :] + ln_b[None, :] - target) * ln_w[None, :]
    m = tl.sum(gx * xhat, 1) / D
    grad = rstd[:, None] * (gx - (tl.sum(gx, 1) / D)[:, None] - xhat * m[:, None])
    return grad, xhat, rstd, gx, m


@triton.jit
def ln_l2_grad_backward(u, xhat, rstd, gx, m, target, ln_w, ln_b, D: tl.constexpr):
    """Backward of ln_l2_grad for an upstream gradient u = dL/dgrad.

    Returns (dz, dtarget, dln_w, dln_b), the last two per row (the caller sums the rows).
    """
    dgx = rstd[:, None] * project_out(u, xhat, D)
    residual = xhat * ln_w[None, :] + ln_b[None, :] - target
    dxhat = dgx * ln_w[None, :] * ln_w[None, :] - rstd[:, None] * (u * m[:, None] + gx * (tl.sum(u * xhat, 1) / D)[:, None])
    # grad = rstd * (...) also depends on z through rstd itself: d rstd / dz = -rstd^2 xhat / D.
    drstd = tl.sum(u * (gx - (tl.sum(gx, 1) / D)[:, None] - xhat * m[:, None]), 1)
    dz = rstd[:, None] * project_out(dxhat, xhat, D) - (drstd * rstd * rstd / D)[:, None] * xhat
    dln_w = dgx * (residual + ln_w[None, :] * xhat)
    dln_b = dgx * ln_w[None, :]
    return dz, -dgx * ln_w[None, :], dln_w, dln_b


@triton.jit
def residual_layer_norm(q, zbar, ln_w, ln_b, D: tl.constexpr):
    """q + LN(zbar): a layer's output. Returns (out, xhat, rstd)."""
    xhat, rstd = normalize(zbar, D)
    return q + xhat * ln_w[None, :] + ln_b[None, :], xhat, rstd


@triton.jit
def residual_layer_norm_backward(dout, xhat, rstd, ln_w, D: tl.constexpr):
    """dL/dzbar of q + LN(zbar) (dL/dq is dout itself)."""
    return rstd[:, None] * project_out(dout * ln_w[None, :], xhat, D)


@triton.jit
def stable_tanh(x):
    # 1 - 2 / (e^{2x} + 1) saturates to +-1 without overflow issues (inf -> 1, 0 -> -1).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def gelu_tanh(x):
    return 0.5 * x * (1.0 + stable_tanh((x + x * x * x * GELU_A) * GELU_C))


@triton.jit
def gelu_tanh_grads(x):
    """(gelu'(x), gelu''(x)) of the tanh-approximated GELU."""
    t = stable_tanh((x + x * x * x * GELU_A) * GELU_C)
    du = (1.0 + x * x * GELU_A * 3.0) * GELU_C
    sech2 = 1.0 - t * t
    first = 0.5 * (1.0 + t) + 0.5 * x * sech2 * du
    second = sech2 * (du + 0.5 * x * (x * GELU_A * GELU_C * 6.0 - 2.0 * t * du * du))
    return first, second


@triton.jit
def causal_lr(c, lr, BL: tl.constexpr):
    """eta[i, j] = c[i] * lr[j] for j <= i, else 0: [BL, BL]."""
    rows = tl.arange(0, BL)
    return tl.where(rows[:, None] >= rows[None, :], c[:, None] * lr[None, :], 0.0)


@triton.jit
def restarts(resets_ptr, n, H, blk, n_blocks):
    """Whether program n's state restarts from the initial weights at the start of mini-batch blk:
    resets is int8 [B, n_blocks], one row for every head of a batch row."""
    return tl.load(resets_ptr + (n // H) * n_blocks + blk) != 0


@triton.jit
def block_mask(flag, offsets):
    """A scalar condition as a mask shaped like offsets. (tl.load would broadcast a scalar mask
    itself, but Triton's interpreter then gets an int8 mask from a comparison and refuses it.)"""
    return tl.where(flag, tl.full(offsets.shape, 1, tl.int1), tl.full(offsets.shape, 0, tl.int1))


@triton.jit
def restart_gradient(dx, reset, dinit_ptr, offsets):
    """At a restart (reset, a scalar), add dx, the gradient of the state a mini-batch starts from, to
    the initial weights' gradient at offsets, and return zero: nothing flows into the previous
    mini-batch's final state. Elsewhere dx itself, and nothing is read or written. Each element is
    read and written by the same thread, so repeated restarts need no barrier."""
    mask = block_mask(reset, offsets)
    tl.store(dinit_ptr + offsets, tl.load(dinit_ptr + offsets, mask=mask, other=0.0) + dx, mask=mask)
    return tl.where(reset, 0.0, dx)
