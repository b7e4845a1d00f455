"""Max-pooling, alone (``max_pool2d``) and fused behind ReLU + LRN (``relu_lrn_max_pool2d``).

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
import torch.nn.functional as F

from ._common import (
    Config,
    check_lrn_args,
    check_same_device,
    check_tensor,
    dense,
    launch,
    memory_format,
    pool_args,
    pool_out_size,
    register_kernel,
    tl,
    triton,
    use_triton,
)
from .lrn import _lrn_window, launch_seq_backward, lrn_backward_torch, lrn_forward_torch, use_seq_backward

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

# Launch configurations by (memory format, fused with LRN). NCHW tiles are long along the contiguous
# pixel axis, channels_last ones along C. Each is the largest tile that ptxas builds without spilling
# for every dtype on sm_80 and sm_90 (tests/test_compile_sm.py checks that).
_FWD_CONFIGS = {
    (torch.contiguous_format, False): Config(dict(BLOCK_C=4, BLOCK_P=64), num_warps=4),
    (torch.channels_last, False): Config(dict(BLOCK_C=16, BLOCK_P=16), num_warps=4),
    (torch.contiguous_format, True): Config(dict(BLOCK_C=8, BLOCK_P=64), num_warps=4),
    (torch.channels_last, True): Config(dict(BLOCK_C=32, BLOCK_P=16), num_warps=4),
}
_BWD_CONFIGS = {
    (torch.contiguous_format, False): Config(dict(BLOCK_C=4, BLOCK_HW=128), num_warps=4),
    (torch.channels_last, False): Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=4),
    (torch.contiguous_format, True): Config(dict(BLOCK_C=4, BLOCK_HW=128), num_warps=4),
    (torch.channels_last, True): Config(dict(BLOCK_C=32, BLOCK_HW=32), num_warps=4),
}
_NO_LRN = (1, 0.0, 0.0, 1.0)  # (size, alpha, beta, k) that the plain max-pool kernels ignore


def _argmax_dtype(kernel) -> torch.dtype:
    return torch.uint8 if kernel[0] * kernel[1] <= 256 else torch.int32


def _lrn_launch_args(lrn):
    size, alpha, beta, k = lrn
    return size, _lrn_window(size), alpha / size, beta, k


def _window_origins(oh: int, ow: int, stride, padding, device):
    """Row (1, 1, OH, 1) and column (1, 1, 1, OW) of each pooled output's window origin."""
    rows = (torch.arange(oh, device=device) * stride[0] - padding[0]).view(1, 1, -1, 1)
    cols = (torch.arange(ow, device=device) * stride[1] - padding[1]).view(1, 1, 1, -1)
    return rows, cols


def _window_offsets(w: int, kernel, device) -> torch.Tensor:
    """Flat offset from the window origin of each window-local position kh * KW + kw."""
    kh = torch.arange(kernel[0], device=device).view(-1, 1)
    kw = torch.arange(kernel[1], device=device).view(1, -1)
    return (kh * w + kw).reshape(-1)


def _local_to_flat(local, w, kernel, stride, padding):
    """Window-local argmax (kh * KW + kw) -> PyTorch's flat index ih * W + iw, per pooled output."""
    rows, cols = _window_origins(local.shape[2], local.shape[3], stride, padding, local.device)
    return (rows * w + cols) + torch.take(_window_offsets(w, kernel, local.device), local.long())


def _flat_to_local(flat, w, kernel, stride, padding):
    rows, cols = _window_origins(flat.shape[2], flat.shape[3], stride, padding, flat.device)
    if kernel[1] <= w:  # kh * W + kw is then distinct for every window position: a lookup table
        table = torch.zeros(kernel[0] * w, dtype=torch.int64, device=flat.device)
        table[_window_offsets(w, kernel, flat.device)] = torch.arange(kernel[0] * kernel[1],
                                                                      device=flat.device)
        return torch.take(table, flat - (rows * w + cols))  # take: far faster than indexing on CPU
    # a window wider than the row (only with padding): split the flat index itself
    return (torch.div(flat, w, rounding_mode="floor") - rows) * kernel[1] + (flat % w - cols)


def _pool_forward(x, kernel, stride, padding, lrn):
    """lrn: None for plain max-pool, else (size, alpha, beta, k). Returns (y, argmax)."""
    fmt = memory_format(x)
    x = dense(x, fmt)
    n, c, h, w = x.shape
    y, am = _pooled_outputs(x, kernel, stride, padding)  # in fmt, as the fake implementation allocates
    oh, ow = y.shape[2:]
    if y.numel() == 0:
        return y, am
    if not use_triton(x):
        v = x if lrn is None else lrn_forward_torch(x, *lrn)
        out, flat = F.max_pool2d(v, kernel, stride, padding, return_indices=True)
        y.copy_(out)
        am.copy_(_flat_to_local(flat, w, kernel, stride, padding))
        return y, am
    cfg = _FWD_CONFIGS[(fmt, lrn is not None)]
    grid = (triton.cdiv(c, cfg.constexprs["BLOCK_C"]) * triton.cdiv(oh * ow, cfg.constexprs["BLOCK_P"]) * n,)
    launch("max_pool2d_fwd" if lrn is None else "relu_lrn_max_pool2d_fwd", _pool_fwd_kernel, grid,
           (x, y, am, c, h, w, ow, oh * ow, *x.stride(), *y.stride(), *kernel, *stride, *padding,
            *_lrn_launch_args(lrn or _NO_LRN)), cfg, x.device,
           (kernel[0], kernel[1]) + (() if lrn is None else (lrn[0],)), FUSE_LRN=lrn is not None)
    return y, am


def _pool_backward(dy, am, x, input_hw, kernel, stride, padding, lrn):
    """Gradient of the input. x (the forward's input) is needed only when lrn is not None."""
    check_same_device("relu_lrn_max_pool2d" if lrn else "max_pool2d", grad=dy, argmax=am,
                      **({} if x is None else {"input": x}))
    fmt = memory_format(am) if x is None else memory_format(x)
    am = dense(am, fmt)
    dy = dense(dy, fmt)
    n, c = dy.shape[:2]
    h, w = input_hw
    dx = _input_grad(dy, am, x, input_hw)
    if x is not None:
        x = dense(x, fmt)
    if dx.numel() == 0:
        return dx
    if dy.numel() == 0:
        return dx.zero_()
    if not use_triton(dy):
        compute = torch.float64 if dy.dtype == torch.float64 else torch.float32  # as the kernel sums
        shape_only = torch.empty(1, dtype=compute, device=dy.device).expand(n, c, h, w)
        g = torch.ops.aten.max_pool2d_with_indices_backward(
            dy.to(compute), shape_only, list(kernel), list(stride), list(padding), [1, 1], False,
            _local_to_flat(am, w, kernel, stride, padding))
        return dx.copy_(g if lrn is None else lrn_backward_torch(x, g, *lrn))
    if lrn is not None and use_seq_backward(fmt, lrn[0], (kernel, stride, padding)):
        launch_seq_backward(x, dy, am, dx, (kernel, stride, padding), *lrn)
        return dx
    cfg = _BWD_CONFIGS[(fmt, lrn is not None)]
    grid = (triton.cdiv(c, cfg.constexprs["BLOCK_C"]) * triton.cdiv(h * w, cfg.constexprs["BLOCK_HW"]) * n,)
    launch("max_pool2d_bwd" if lrn is None else "relu_lrn_max_pool2d_bwd", _pool_bwd_kernel, grid,
           (dx if x is None else x, dy, am, dx, c, h, w, dy.shape[2], dy.shape[3], *dx.stride(), *dy.stride(),
            *kernel, *stride, *padding, *_lrn_launch_args(lrn or _NO_LRN)), cfg, dy.device,
           () if lrn is None else (lrn[0], lrn[0]), FUSE_LRN=lrn is not None)
    return dx


def _pooled_outputs(x, kernel, stride, padding):
    """Empty (pooled output, argmax) in x's memory format: the real op's and the fake one's."""
    fmt = memory_format(x)
    n, c, h, w = x.shape
    oh, ow = pool_out_size(h, w, kernel, stride, padding)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    am = torch.empty((n, c, oh, ow), dtype=_argmax_dtype(kernel), device=x.device, memory_format=fmt)
    return y, am


def _input_grad(dy, am, x, input_hw):
    """Empty input gradient in the input's memory format (the argmax's when x is not saved)."""
    fmt = memory_format(am) if x is None else memory_format(x)
    return torch.empty((dy.shape[0], dy.shape[1], *input_hw), dtype=dy.dtype, device=dy.device,
                       memory_format=fmt)


# ---------------------------------------------------------------------------------- registration


@torch.library.custom_op("alexnet_triton::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int],
                  padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_forward(x, kernel_size, stride, padding, None)


@max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding):
    return _pooled_outputs(x, kernel_size, stride, padding)


@torch.library.custom_op("alexnet_triton::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, input_hw: list[int],
                           kernel_size: list[int], stride: list[int], padding: list[int]) -> torch.Tensor:
    return _pool_backward(dy, argmax, None, input_hw, kernel_size, stride, padding, None)


@max_pool2d_backward_op.register_fake
def _(dy, argmax, input_hw, kernel_size, stride, padding):
    return _input_grad(dy, argmax, None, input_hw)


def _pool_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding = inputs
    ctx.save_for_backward(output[1])  # the argmax bytes only: backward needs no input values
    ctx.args = (list(x.shape[2:]), kernel_size, stride, padding)


def _pool_backward_fn(ctx, dy, _d_argmax):
    (argmax,) = ctx.saved_tensors
    return max_pool2d_backward_op(dy, argmax, *ctx.args), None, None, None


max_pool2d_op.register_autograd(_pool_backward_fn, setup_context=_pool_setup_context)


@torch.library.custom_op("alexnet_triton::relu_lrn_max_pool2d", mutates_args=())
def relu_lrn_max_pool2d_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                           kernel_size: list[int], stride: list[int],
                           padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_forward(x, kernel_size, stride, padding, (size, alpha, beta, k))


@relu_lrn_max_pool2d_op.register_fake
def _(x, size, alpha, beta, k, kernel_size, stride, padding):
    return _pooled_outputs(x, kernel_size, stride, padding)


@torch.library.custom_op("alexnet_triton::relu_lrn_max_pool2d_backward", mutates_args=())
def relu_lrn_max_pool2d_backward_op(dy: torch.Tensor, argmax: torch.Tensor, x: torch.Tensor, size: int,
                                    alpha: float, beta: float, k: float, kernel_size: list[int],
                                    stride: list[int], padding: list[int]) -> torch.Tensor:
    return _pool_backward(dy, argmax, x, list(x.shape[2:]), kernel_size, stride, padding,
                          (size, alpha, beta, k))


@relu_lrn_max_pool2d_backward_op.register_fake
def _(dy, argmax, x, size, alpha, beta, k, kernel_size, stride, padding):
    return _input_grad(dy, argmax, x, list(x.shape[2:]))


def _block_setup_context(ctx, inputs, output):
    x, size, alpha, beta, k, kernel_size, stride, padding = inputs
    ctx.save_for_backward(x, output[1])  # the input and one byte per pooled output: nothing else
    ctx.args = (size, alpha, beta, k, kernel_size, stride, padding)


def _block_backward_fn(ctx, dy, _d_argmax):
    x, argmax = ctx.saved_tensors
    return (relu_lrn_max_pool2d_backward_op(dy, argmax, x, *ctx.args),) + (None,) * 7


relu_lrn_max_pool2d_op.register_autograd(_block_backward_fn, setup_context=_block_setup_context)


# ----------------------------------------------------------------------------------------- public


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)``; saves one byte per output for backward.

    ``stride=None`` means ``kernel_size``, as in PyTorch."""
    check_tensor("max_pool2d", x, ndim=4)
    kernel, stride, padding, _ = pool_args("max_pool2d", x, kernel_size, stride, padding)
    return max_pool2d_op(x, list(kernel), list(stride), list(padding))[0]


def relu_lrn_max_pool2d(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0, kernel_size=3, stride=2, padding=0) -> torch.Tensor:
    """``max_pool2d(relu_lrn(x, size, alpha, beta, k), kernel_size, stride, padding)`` in one kernel each
    way, saving only x and one byte per pooled output."""
    check_tensor("relu_lrn_max_pool2d", x, ndim=4)
    check_lrn_args("relu_lrn_max_pool2d", size, alpha, beta, k)
    kernel, stride, padding, _ = pool_args("relu_lrn_max_pool2d", x, kernel_size, stride, padding)
    return relu_lrn_max_pool2d_op(x, size, float(alpha), float(beta), float(k), list(kernel), list(stride),
                                  list(padding))[0]



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


def _with(configs, fused: bool):
    return [Config({**cfg.constexprs, "FUSE_LRN": fused}, cfg.num_warps)
            for (_, f), cfg in configs.items() if f == fused]


if triton is not None:
    register_kernel("max_pool2d_fwd", _pool_fwd_kernel, _with(_FWD_CONFIGS, False),
                    lambda dtype: _signature("fwd", dtype))
    register_kernel("max_pool2d_bwd", _pool_bwd_kernel, _with(_BWD_CONFIGS, False),
                    lambda dtype: _signature("bwd", dtype))
    register_kernel("relu_lrn_max_pool2d_fwd", _pool_fwd_kernel, _with(_FWD_CONFIGS, True),
                    lambda dtype: _signature("fwd", dtype))
    register_kernel("relu_lrn_max_pool2d_bwd", _pool_bwd_kernel, _with(_BWD_CONFIGS, True),
                    lambda dtype: _signature("bwd", dtype))
