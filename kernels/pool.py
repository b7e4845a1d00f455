"""Max-pooling: ``max_pool2d``.

Forward keeps, per pooled output, the position of the maximum inside its window as one byte
(kh * KW + kw; int32 for windows of more than 256 elements) instead of PyTorch's int64 flat index.
Backward is a gather: every input position looks at the few windows that contain it, so it is
deterministic and needs no atomics. The fused block saves only its input and that byte: the LRN
output is recomputed in backward, never stored.

PyTorch's rules, kept exactly: the window's maximum starts at -inf with the index of its first
in-bounds position; a value replaces it when ``v > max or isnan(v)`` (so ties go to the first
maximum in row-major order and the last NaN wins); padding never wins.
"""

from __future__ import annotations

import torch

from ._common import (
    Config,
    check_same_device,
    check_tensor,
    dense,
    launch,
    memory_format,
    pool_args,
    register_kernel,
    tl,
    triton,
    use_triton,
)
from ._pooling import input_grad, pool_backward_torch, pool_forward_torch, pooled_outputs

# ------------------------------------------------------------------------------------- kernels

if triton is not None:
    from ._jit import _acc_zeros, _gather_pool_grad, _pow, _relu, _tile_ids, _upcast, _window_sumsq

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr,  # *T (N, C, H, W) input
        y_ptr,  # *T (N, C, OH, OW) pooled output
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax inside the window, kh * KW + kw; same strides as y
        C, H, W, OW, P,  # channels, input height and width, output width, OH * OW
        s_n, s_c, s_h, s_w,  # strides of x in elements
        o_n, o_c, o_h, o_w,  # strides of y and am in elements
        KH, KW, SH, SW, PH, PW,  # kernel, stride, padding
        size, lo, alpha_n, beta, k,  # LRN window, channels before c, alpha / size, exponent, constant
        FUSE_LRN: tl.constexpr,  # pool relu_lrn(x) instead of x
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        pid_c, pid_p, n = _tile_ids(C, BLOCK_C, P, BLOCK_P)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]  # (BLOCK_C, 1)
        p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P))[None, :]  # (1, BLOCK_P) flat output position
        valid = (c < C) & (p < P)
        oh = p // OW
        ow = p % OW
        h0 = oh * SH - PH  # window origin, may be negative inside the padding
        w0 = ow * SW - PW
        x_base = n.to(tl.int64) * s_n
        c_off = c.to(tl.int64) * s_c

        best = _acc_zeros(valid, y_ptr) - float("inf")
        arg = (tl.maximum(-h0, 0) * KW + tl.maximum(-w0, 0)) + tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
        for kh in range(KH):
            ih = h0 + kh
            for kw in range(KW):
                iw = w0 + kw
                inb = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                sp_off = ih.to(tl.int64) * s_h + iw.to(tl.int64) * s_w
                v = _upcast(tl.load(x_ptr + x_base + c_off + sp_off, mask=inb, other=float("-inf")))
                if FUSE_LRN:
                    # (the window's centre is loaded again above: reusing it spills on sm_80 in float64)
                    sumsq, _ = _window_sumsq(x_ptr, x_base, sp_off, c, C, inb, s_c, size, lo)
                    # round to the output dtype before comparing, as the unfused ops would
                    v = _upcast((_relu(v) * _pow(k + alpha_n * sumsq, -beta)).to(y_ptr.dtype.element_ty))
                take = inb & ((v > best) | (v != v))
                best = tl.where(take, v, best)
                arg = tl.where(take, kh * KW + kw, arg)

        o_off = n.to(tl.int64) * o_n + c.to(tl.int64) * o_c + oh.to(tl.int64) * o_h + ow.to(tl.int64) * o_w
        tl.store(y_ptr + o_off, best.to(y_ptr.dtype.element_ty), mask=valid)
        tl.store(am_ptr + o_off, arg.to(am_ptr.dtype.element_ty), mask=valid)

    # Fused backward. g = gradient of the LRN output (gathered from the pooled gradient), then, with
    # t_c = g_c * r_c * s_c^(-beta-1) (see lrn.py):
    #   dx_c = [x_c > 0] * (g_c * s_c^-beta - 2 * (alpha/size) * beta * r_c * sum_{c' in [c-hi, c+lo]} t_c')
    @triton.jit
    def _pool_bwd_kernel(
        x_ptr,  # *T (N, C, H, W) the forward's input (read only when FUSE_LRN)
        dy_ptr,  # *T (N, C, OH, OW) gradient of the pooled output
        am_ptr,  # *u8|i32 (N, C, OH, OW) argmax from the forward, same strides as dy
        dx_ptr,  # *T (N, C, H, W) gradient of the input, same strides as x
        C, H, W, OH, OW,  # channels, input height and width, output height and width
        s_n, s_c, s_h, s_w,  # strides of x and dx in elements
        o_n, o_c, o_h, o_w,  # strides of dy and am in elements
        KH, KW, SH, SW, PH, PW,  # kernel, stride, padding
        size, lo, alpha_n, beta, k,  # LRN window, channels before c, alpha / size, exponent, constant
        FUSE_LRN: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):
        pid_c, pid_hw, n = _tile_ids(C, BLOCK_C, H * W, BLOCK_HW)
        c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
        hw = (pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW))[None, :]
        valid = (c < C) & (hw < H * W)
        ih = hw // W
        iw = hw % W
        x_base = n.to(tl.int64) * s_n
        o_base = n.to(tl.int64) * o_n
        sp_off = ih.to(tl.int64) * s_h + iw.to(tl.int64) * s_w
        offs = x_base + c.to(tl.int64) * s_c + sp_off
        NH = (KH + SH - 1) // SH  # windows per row / column that can contain one position
        NW = (KW + SW - 1) // SW
        if FUSE_LRN:
            hi = size - 1 - lo
            t_sum = _acc_zeros(valid, x_ptr)
            s_self = t_sum + k
            g_self = t_sum
            for d in range(size):  # c' = c + d - hi runs over [c - hi, c + lo]
                cp = c + (d - hi)
                m = valid & (cp >= 0) & (cp < C)
                sumsq, r_cp = _window_sumsq(x_ptr, x_base, sp_off, cp, C, m, s_c, size, lo)
                s_cp = k + alpha_n * sumsq
                g_cp = _gather_pool_grad(dy_ptr, am_ptr, o_base, cp, ih, iw, m, OH, OW, o_c, o_h, o_w,
                                         KH, KW, SH, SW, PH, PW, NH, NW)
                t_sum += tl.where(m, g_cp * r_cp * _pow(s_cp, -beta - 1.0), 0.0)
                s_self = tl.where(d == hi, s_cp, s_self)
                g_self = tl.where(d == hi, g_cp, g_self)
            x = _upcast(tl.load(x_ptr + offs, mask=valid, other=0.0))
            dr = g_self * _pow(s_self, -beta) - (2.0 * alpha_n * beta) * _relu(x) * t_sum
            dx = tl.where(x > 0, dr, 0.0)
        else:
            dx = _gather_pool_grad(dy_ptr, am_ptr, o_base, c, ih, iw, valid, OH, OW, o_c, o_h, o_w,
                                   KH, KW, SH, SW, PH, PW, NH, NW)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)


# ------------------------------------------------------------------------------------ launchers

# Launch configurations by memory format. NCHW tiles are long along the contiguous pixel axis,
# channels_last ones along C.
_FWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=4, BLOCK_P=64), num_warps=4),
    torch.channels_last: Config(dict(BLOCK_C=16, BLOCK_P=16), num_warps=4),
}
_BWD_CONFIGS = {
    torch.contiguous_format: Config(dict(BLOCK_C=4, BLOCK_HW=128), num_warps=4),
    torch.channels_last: Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=4),
}
_NO_LRN = (1, 0, 0.0, 0.0, 1.0)  # (size, lo, alpha / size, beta, k) that the plain max-pool kernels ignore


def _pool_forward(x, kernel, stride, padding):
    """Returns (y, argmax)."""
    fmt = memory_format(x)
    x = dense(x, fmt)
    n, c, h, w = x.shape
    y, am = pooled_outputs(x, kernel, stride, padding)  # in fmt, as the fake implementation allocates
    oh, ow = y.shape[2:]
    if y.numel() == 0:
        return y, am
    if not use_triton(x):
        return pool_forward_torch(x, kernel, stride, padding, y, am)
    cfg = _FWD_CONFIGS[fmt]
    grid = (triton.cdiv(c, cfg.constexprs["BLOCK_C"]) * triton.cdiv(oh * ow, cfg.constexprs["BLOCK_P"]) * n,)
    launch("max_pool2d_fwd", _pool_fwd_kernel, grid,
           (x, y, am, c, h, w, ow, oh * ow, *x.stride(), *y.stride(), *kernel, *stride, *padding, *_NO_LRN),
           cfg, x.device, (kernel[0], kernel[1]), FUSE_LRN=False)
    return y, am


def _pool_backward(dy, am, input_hw, kernel, stride, padding):
    check_same_device("max_pool2d", grad=dy, argmax=am)
    fmt = memory_format(am)
    am = dense(am, fmt)
    dy = dense(dy, fmt)
    n, c = dy.shape[:2]
    h, w = input_hw
    dx = input_grad(dy, am, None, input_hw)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0:
        return dx.zero_()
    if not use_triton(dy):
        return dx.copy_(pool_backward_torch(dy, am, input_hw, kernel, stride, padding))
    cfg = _BWD_CONFIGS[fmt]
    grid = (triton.cdiv(c, cfg.constexprs["BLOCK_C"]) * triton.cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    launch("max_pool2d_bwd", _pool_bwd_kernel, grid,
           (dx, dy, am, dx, c, h, w, dy.shape[2], dy.shape[3], *dx.stride(), *dy.stride(),
            *kernel, *stride, *padding, *_NO_LRN), cfg, dy.device, (), FUSE_LRN=False)
    return dx


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int],
                  padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_forward(x, kernel_size, stride, padding)


@max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding):
    return pooled_outputs(x, kernel_size, stride, padding)


@torch.library.custom_op("alexnet_triton::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, input_hw: list[int],
                           kernel_size: list[int], stride: list[int], padding: list[int]) -> torch.Tensor:
    return _pool_backward(dy, argmax, input_hw, kernel_size, stride, padding)


@max_pool2d_backward_op.register_fake
def _(dy, argmax, input_hw, kernel_size, stride, padding):
    return input_grad(dy, argmax, None, input_hw)


def _pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding = inputs
    ctx.save_for_backward(output[1])  # the argmax bytes only: backward needs no input values
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding)


def _pool_backward_fn(ctx, dy, _d_argmax):
    (argmax,) = ctx.saved_tensors
    return max_pool2d_backward_op(dy, argmax, *ctx.args), None, None, None


max_pool2d_op.register_autograd(_pool_backward_fn, setup_context=_pool_setup_context)


# ----------------------------------------------------------------------------------------- public


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)``; saves one byte per output for backward.

    ``stride=None`` means ``kernel_size``, as in PyTorch."""
    check_tensor("max_pool2d", x, ndim=4)
    kernel, stride, padding, _ = pool_args("max_pool2d", x, kernel_size, stride, padding)
    return max_pool2d_op(x, list(kernel), list(stride), list(padding))[0]


# ------------------------------------------------------------------------- compile-test signatures


def _signature(direction: str, dtype: str, argmax: str = "u8") -> dict:
    if direction == "fwd":
        sig = {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "am_ptr": f"*{argmax}"}
        sig.update({name: "i32" for name in ("C", "H", "W", "OW", "P")})
    else:
        sig = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "am_ptr": f"*{argmax}", "dx_ptr": f"*{dtype}"}
        sig.update({name: "i32" for name in ("C", "H", "W", "OH", "OW")})
    sig.update({name: "i64" for name in ("s_n", "s_c", "s_h", "s_w", "o_n", "o_c", "o_h", "o_w")})
    sig.update({name: "i32" for name in ("KH", "KW", "SH", "SW", "PH", "PW", "size", "lo")})
    sig.update(alpha_n="fp32", beta="fp32", k="fp32", FUSE_LRN="constexpr", BLOCK_C="constexpr")
    sig["BLOCK_P" if direction == "fwd" else "BLOCK_HW"] = "constexpr"
    return sig


if triton is not None:
    register_kernel("max_pool2d_fwd", _pool_fwd_kernel,
                    [Config({**c.constexprs, "FUSE_LRN": False}, c.num_warps) for c in _FWD_CONFIGS.values()],
                    lambda dtype: _signature("fwd", dtype))
    register_kernel("max_pool2d_bwd", _pool_bwd_kernel,
                    [Config({**c.constexprs, "FUSE_LRN": False}, c.num_warps) for c in _BWD_CONFIGS.values()],
                    lambda dtype: _signature("bwd", dtype))
