"""ReLU + local response normalisation across channels, fused: ``relu_lrn``.

    r = relu(x);  s_c = k + (alpha / size) * sum_{c' in win(c)} r_c'^2;  y_c = r_c * s_c^-beta
    win(c) = [c - size // 2, c + (size - 1) // 2]   (PyTorch's padding, also for even sizes)

Forward reads x once from DRAM (the window's other channels come from cache) and writes y.
Backward saves nothing but x: it recomputes s from x and reads x and dy, writes dx.
"""

from __future__ import annotations

import torch

from ._common import (
    Config,
    check_lrn_args,
    check_same_device,
    check_tensor,
    dense,
    launch,
    memory_format,
    register_kernel,
    tl,
    triton,
    use_triton,
)

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import _acc_zeros, _gather_pool_grad, _pow, _relu, _tile_ids, _upcast, _window_sumsq

    @triton.jit
    def _relu_lrn_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input, NCHW or channels_last dense
        y_ptr,  # *T (N, C, H, W) output, same strides as x
        C, HW,  # channels, H * W
        s_n, s_c, s_hw,  # strides of x and y in elements (s_hw: stride of the flattened H*W axis)
        size, lo,  # window size, channels before c in the window (size // 2)
        alpha_n, beta, k,  # alpha / size, exponent, additive constant
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, HW, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # (BLOCK_C, 1)
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]  # (1, BLOCK_HW)
        base = n.to(tl.int64) * s_n
        sp_off = hw.to(tl.int64) * s_hw
        valid = (c < C) & (hw < HW)

        sumsq, r = _window_sumsq(x_ptr, base, sp_off, c, C, valid, s_c, size, lo)
        offs = base + c.to(tl.int64) * s_c + sp_off
        y = r * _pow(k + alpha_n * sumsq, -beta)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)

    # Backward (Caffe's lrn_layer derivation, with relu in front). With t_c = dy_c * r_c * s_c^(-beta-1):
    #   dr_c = dy_c * s_c^-beta - 2 * (alpha/size) * beta * r_c * sum_{c': c in win(c')} t_c'
    #   dx_c = dr_c * [x_c > 0]
    # c in win(c') <=> c' in [c - hi, c + lo] with hi = size - 1 - lo. Each s_c' is recomputed from x.
    @triton.jit
    def _relu_lrn_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input
        dy_ptr,  # *T (N, C, H, W) gradient of the output, same strides as x
        dx_ptr,  # *T (N, C, H, W) gradient of the input, same strides as x
        C, HW,  # channels, H * W
        s_n, s_c, s_hw,  # strides of x, dy, dx in elements
        size, lo,  # window size, channels before c in the window
        alpha_n, beta, k,  # alpha / size, exponent, additive constant
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, HW, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
        base = n.to(tl.int64) * s_n
        sp_off = hw.to(tl.int64) * s_hw
        valid = (c < C) & (hw < HW)
        hi = size - 1 - lo

        t_sum = _acc_zeros(valid, x_ptr)
        s_self = t_sum + k
        for d in range(size):  # c' = c + d - hi runs over [c - hi, c + lo]
            cp = c + (d - hi)
            m = valid & (cp >= 0) & (cp < C)
            sumsq, r_cp = _window_sumsq(x_ptr, base, sp_off, cp, C, m, s_c, size, lo)
            s_cp = k + alpha_n * sumsq
            offs_cp = base + cp.to(tl.int64) * s_c + sp_off
            dy_cp = _upcast(tl.load(dy_ptr + offs_cp, mask=m, other=0.0))
            t_sum += tl.where(m, dy_cp * r_cp * _pow(s_cp, -beta - 1.0), 0.0)
            s_self = tl.where(d == hi, s_cp, s_self)

        offs = base + c.to(tl.int64) * s_c + sp_off
        x = _upcast(tl.load(x_ptr + offs, mask=valid, other=0.0))
        dy = _upcast(tl.load(dy_ptr + offs, mask=valid, other=0.0))
        r = _relu(x)
        dr = dy * _pow(s_self, -beta) - (2.0 * alpha_n * beta) * r * t_sum
        dx = tl.where(x > 0, dr, 0.0)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)


    # The same backward for NCHW inputs, walking the channels in order instead of re-reading each
    # window: a program owns BLOCK_HW pixels and CHUNK channels, and keeps three rings of `size` rows
    # in registers (slot = channel mod size): R holds r^2 (so s_j is the sum of R), T holds t and A
    # holds g * s^-beta. At step i it loads channel i, finishes t_j for j = i - hi, and writes dx_c for
    # c = i - size + 1, whose window of t's is then exactly T. Sums never subtract, so inf and NaN
    # behave as in the direct formula. Per element: x three times and g once, all from L1/L2.
    # POOL: g is the gradient gathered through the max-pool's argmax (relu_lrn_max_pool2d); else dy.
    @triton.jit
    def _lrn_bwd_seq_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input, NCHW dense
        dy_ptr,  # *T gradient of the output: (N, C, H, W), or (N, C, OH, OW) when POOL
        am_ptr,  # *u8|i32 (N, C, OH, OW) the pool's argmax (read only when POOL)
        dx_ptr,  # *T (N, C, H, W) gradient of the input, same strides as x
        C, H, W, OH, OW,  # channels, input height and width, pooled height and width
        s_n, s_c, s_h, s_w,  # strides of x, dx (and dy unless POOL) in elements
        o_n, o_c, o_h, o_w,  # strides of dy and am when POOL, in elements
        KH, KW, SH, SW, PH, PW,  # pooling kernel, stride, padding (used only when POOL)
        size, lo, alpha_n, beta, k,  # LRN window, channels before c, alpha / size, exponent, constant
        POOL: tl.constexpr,
        NWIN: tl.constexpr,  # with POOL: >= ceil(kernel / stride), the windows per axis holding a pixel
        RING: tl.constexpr,  # rows of each ring: a power of two >= size
        CHUNK: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        pid_c, pid_hw, n = _tile_ids(C, CHUNK, H * W, BLOCK_HW)
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]  # (1, BLOCK_HW)
        in_hw = hw < H * W
        ih = hw // W
        iw = hw % W
        x_base = n.to(tl.int64) * s_n
        o_base = n.to(tl.int64) * o_n
        sp_off = ih.to(tl.int64) * s_h + iw.to(tl.int64) * s_w
        rows = tl.arange(0, RING)[:, None]  # (RING, 1)
        R = _acc_zeros(rows + hw, x_ptr)  # (RING, BLOCK_HW)
        T = R
        A = R
        hi = size - 1 - lo
        c0 = pid_c * CHUNK
        c_end = tl.minimum(c0 + CHUNK, C)
        base = c0 - 2 * size  # below every channel index used here, so (ch - base) % size >= 0
        coef = 2.0 * alpha_n * beta
        for i in range(c0 - size + 1, c_end + size - 1):
            m_i = in_hw & (i >= 0) & (i < C)
            r_i = _relu(_upcast(tl.load(x_ptr + x_base + i * s_c + sp_off, mask=m_i, other=0.0)))
            R = tl.where(rows == (i - base) % size, r_i * r_i, R)

            j = i - hi  # R now holds channels [j - lo, j + hi]: s_j is complete
            m_j = in_hw & (j >= 0) & (j < C)
            s_j = k + alpha_n * tl.sum(R, axis=0)[None, :]
            r_j = _relu(_upcast(tl.load(x_ptr + x_base + j * s_c + sp_off, mask=m_j, other=0.0)))
            if POOL:
                g_j = _gather_pool_grad(dy_ptr, am_ptr, o_base, j, ih, iw, m_j, OH, OW, o_c, o_h, o_w,
                                        KH, KW, SH, SW, PH, PW, NWIN, NWIN)
            else:
                g_j = _upcast(tl.load(dy_ptr + x_base + j * s_c + sp_off, mask=m_j, other=0.0))
            slot_j = rows == (j - base) % size
            T = tl.where(slot_j, tl.where(m_j, g_j * r_j * _pow(s_j, -beta - 1.0), 0.0), T)
            A = tl.where(slot_j, tl.where(m_j, g_j * _pow(s_j, -beta), 0.0), A)

            c = i - size + 1  # T now holds t over [c - hi, c + lo]
            m_c = in_hw & (c >= c0) & (c < c_end)
            offs_c = x_base + c * s_c + sp_off
            x_c = _upcast(tl.load(x_ptr + offs_c, mask=m_c, other=0.0))
            a_c = tl.sum(tl.where(rows == (c - base) % size, A, 0.0), axis=0)[None, :]
            dx = tl.where(x_c > 0, a_c - coef * _relu(x_c) * tl.sum(T, axis=0)[None, :], 0.0)
            tl.store(dx_ptr + offs_c, dx.to(dx_ptr.dtype.element_ty), mask=m_c)


# ------------------------------------------------------------------------------------ launchers

# NCHW: tiles long along the contiguous H*W axis; channels_last: long along the contiguous C axis.
# Each builds without register spills for every dtype on sm_80 and sm_90 (tests/test_compile_sm.py).
_FWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=8, BLOCK_HW=128), num_warps=4),
    torch.channels_last: Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=4),
}
_BWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=8, BLOCK_HW=128), num_warps=4),
    torch.channels_last: Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=8),
}
# The channel-walking backward for NCHW, for windows of up to 8 channels (one config per ring size).
# BLOCK_HW = 32 * num_warps keeps each ring's rows inside one thread.
# With pooling, for windows that overlap at most twice per axis (kernel <= 2 * stride: AlexNet's 3/2).
SEQ_MAX_SIZE = 8
SEQ_CONFIGS = {(ring, pool, nwin): Config(dict(RING=ring, POOL=pool, NWIN=nwin, CHUNK=32, BLOCK_HW=128),
                                          num_warps=4)
               for ring in (1, 2, 4, 8) for pool, nwin in ((False, 1), (True, 1), (True, 2))}


def _windows_per_axis(pool) -> int:
    kernel, stride, _ = pool
    return max(-(-kernel[0] // stride[0]), -(-kernel[1] // stride[1]))


def use_seq_backward(fmt, size: int, pool=None) -> bool:
    """pool: None, or (kernel, stride, padding) of the fused block."""
    return (fmt == torch.contiguous_format and size <= SEQ_MAX_SIZE
            and (pool is None or _windows_per_axis(pool) <= 2))


def seq_config(size: int, pool) -> Config:
    return SEQ_CONFIGS[(triton.next_power_of_2(size), pool is not None,
                        1 if pool is None else _windows_per_axis(pool))]


def _lrn_window(size: int) -> int:
    return size // 2  # channels before c: PyTorch pads (size // 2, (size - 1) // 2)


def _launch(kernel, tensors, x: torch.Tensor, fmt, size, alpha, beta, k) -> None:
    n, c, h, w = x.shape
    cfg = (_FWD_CONFIGS if kernel is _relu_lrn_fwd_kernel else _BWD_CONFIGS)[fmt]
    grid = (triton.cdiv(c, cfg.constexprs["BLOCK_C"]) * triton.cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    name = "relu_lrn_fwd" if kernel is _relu_lrn_fwd_kernel else "relu_lrn_bwd"
    trips = (size,) if kernel is _relu_lrn_fwd_kernel else (size, size)
    launch(name, kernel, grid, (*tensors, c, h * w, x.stride(0), x.stride(1), x.stride(3), size,
                                _lrn_window(size), alpha / size, beta, k), cfg, x.device, trips)


def launch_seq_backward(x, dy, am, dx, pool, size, alpha, beta, k) -> None:
    """pool: None (relu_lrn) or (kernel, stride, padding) for the fused block, whose dy and am are
    pooled-shaped."""
    n, c, h, w = x.shape
    cfg = seq_config(size, pool)
    grid = (triton.cdiv(c, cfg.constexprs["CHUNK"]) * triton.cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    kernel, stride, padding = pool or ((1, 1), (1, 1), (0, 0))  # ignored without pooling
    launch("lrn_bwd_seq", _lrn_bwd_seq_kernel, grid,
           (x, dy, dx if am is None else am, dx, c, h, w, dy.shape[2], dy.shape[3], *x.stride(), *dy.stride(),
            *kernel, *stride, *padding, size, _lrn_window(size), alpha / size, beta, k), cfg, x.device,
           (min(cfg.constexprs["CHUNK"], c) + 2 * size - 2,))


def _channel_window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, c] = sum of t[:, c - before .. c + after] along channels, zero outside."""
    padded = torch.nn.functional.pad(t, (0, 0, 0, 0, before, after))
    out = torch.zeros_like(t)
    for j in range(before + after + 1):
        out += padded[:, j:j + t.shape[1]]
    return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lrn_forward_torch(x, size, alpha, beta, k):
    """The CPU path: the reference op, computed in float32 for half-precision inputs (as the kernel
    does; PyTorch's CPU avg_pool3d has no bfloat16 kernel), rounded to x's dtype."""
    from . import reference
    return reference.relu_lrn(x.to(_compute_dtype(x.dtype)), size, alpha, beta, k).to(x.dtype)


def lrn_backward_torch(x, dy, size, alpha, beta, k):
    """The same backward as the kernel, in plain PyTorch (the CPU path), in float32 or float64."""
    x = x.to(_compute_dtype(x.dtype))
    dy = dy.to(x.dtype)
    lo = _lrn_window(size)
    hi = size - 1 - lo
    r = torch.relu(x)
    s = k + (alpha / size) * _channel_window_sum(r * r, lo, hi)
    t = dy * r * s.pow(-beta - 1.0)
    dr = dy * s.pow(-beta) - (2.0 * alpha / size * beta) * r * _channel_window_sum(t, hi, lo)
    return torch.where(x > 0, dr, torch.zeros_like(dr))


def _relu_lrn_forward(x, size, alpha, beta, k):
    fmt = memory_format(x)
    x = dense(x, fmt)
    y = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return y
    if not use_triton(x):
        return y.copy_(lrn_forward_torch(x, size, alpha, beta, k))
    _launch(_relu_lrn_fwd_kernel, (x, y), x, fmt, size, alpha, beta, k)
    return y


def _relu_lrn_backward(dy, x, size, alpha, beta, k):
    check_same_device("relu_lrn", grad=dy, input=x)
    fmt = memory_format(x)
    x = dense(x, fmt)
    dy = dense(dy, fmt)
    dx = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return dx
    if not use_triton(x):
        return dx.copy_(lrn_backward_torch(x, dy, size, alpha, beta, k))
    if use_seq_backward(fmt, size):
        launch_seq_backward(x, dy, None, dx, None, size, alpha, beta, k)
    else:
        _launch(_relu_lrn_bwd_kernel, (x, dy, dx), x, fmt, size, alpha, beta, k)
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::relu_lrn", mutates_args=())
def relu_lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return _relu_lrn_forward(x, size, alpha, beta, k)


@relu_lrn_op.register_fake
def _(x, size, alpha, beta, k):
    return torch.empty_like(x, memory_format=memory_format(x))


@torch.library.custom_op("alexnet_triton::relu_lrn_backward", mutates_args=())
def relu_lrn_backward_op(dy: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float,
                         k: float) -> torch.Tensor:
    return _relu_lrn_backward(dy, x, size, alpha, beta, k)


@relu_lrn_backward_op.register_fake
def _(dy, x, size, alpha, beta, k):
    return torch.empty_like(x, memory_format=memory_format(x))


def _setup_context(ctx, inputs, output):
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x)
    ctx.args = (size, alpha, beta, k)


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return relu_lrn_backward_op(dy, x, *ctx.args), None, None, None, None


relu_lrn_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------- public


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
             k: float = 2.0) -> torch.Tensor:
    """``F.local_response_norm(F.relu(x), size, alpha, beta, k)`` in one kernel each way.

    alpha is divided by ``size`` (PyTorch's, Caffe's and cuda-convnet's convention)."""
    check_tensor("relu_lrn", x, ndim=4)
    check_lrn_args("relu_lrn", size, alpha, beta, k)
    return relu_lrn_op(x, size, float(alpha), float(beta), float(k))


# ------------------------------------------------------------------------- compile-test signatures


def _signature(kernel_name: str, dtype: str) -> dict:
    ptrs = ["x_ptr", "y_ptr"] if kernel_name == "relu_lrn_fwd" else ["x_ptr", "dy_ptr", "dx_ptr"]
    sig = {p: f"*{dtype}" for p in ptrs}
    sig.update(C="i32", HW="i32", s_n="i64", s_c="i64", s_hw="i64", size="i32", lo="i32",
               alpha_n="fp32", beta="fp32", k="fp32", BLOCK_C="constexpr", BLOCK_HW="constexpr")
    return sig


def _seq_signature(dtype: str) -> dict:
    sig = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "am_ptr": "*u8", "dx_ptr": f"*{dtype}"}
    sig.update({name: "i32" for name in ("C", "H", "W", "OH", "OW")})
    sig.update({name: "i64" for name in ("s_n", "s_c", "s_h", "s_w", "o_n", "o_c", "o_h", "o_w")})
    sig.update({name: "i32" for name in ("KH", "KW", "SH", "SW", "PH", "PW", "size", "lo")})
    sig.update(alpha_n="fp32", beta="fp32", k="fp32")
    sig.update({name: "constexpr" for name in ("POOL", "NWIN", "RING", "CHUNK", "BLOCK_HW")})
    return sig


if triton is not None:
    register_kernel("relu_lrn_fwd", _relu_lrn_fwd_kernel, _FWD_CONFIGS.values(),
                    lambda dtype: _signature("relu_lrn_fwd", dtype))
    register_kernel("relu_lrn_bwd", _relu_lrn_bwd_kernel, _BWD_CONFIGS.values(),
                    lambda dtype: _signature("relu_lrn_bwd", dtype))
    register_kernel("lrn_bwd_seq", _lrn_bwd_seq_kernel, SEQ_CONFIGS.values(), _seq_signature)
