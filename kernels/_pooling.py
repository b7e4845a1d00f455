"""Host-side plumbing shared by the pooling ops (``max_pool2d``, ``relu_max_pool2d``,
``relu_lrn_max_pool2d``): output allocation, the one-byte argmax's layout and its conversion to and from
PyTorch's flat indices (the CPU path), and the CPU backward.

The argmax is the window-local position kh * KW + kw of the maximum: uint8 while every position fits a
byte, int32 past that. ``relu_max_pool2d`` also needs a value that names no position (a window whose
maximum is not positive: ReLU's backward sends it nothing): 255 in uint8, -1 in int32; so its byte
holds windows of at most 255 elements.

``ceil_mode`` (PyTorch's rule: the output size rounds up, but the last window must start inside the input
or its left padding) only adds windows whose end passes the input's bottom or right edge; the kernels mask
those rows and columns as they mask padding. Outputs and the CPU paths read the mode back from the
output's size (``is_ceil``), so the backward ops need no extra argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import _pair, memory_format, pool_args, pool_out_size


def argmax_dtype(kernel, relu: bool = False) -> torch.dtype:
    """uint8 for windows of up to 256 positions (255 with ``relu``, which keeps 255 as its sentinel)."""
    return torch.uint8 if kernel[0] * kernel[1] <= (255 if relu else 256) else torch.int32


def argmax_sentinel(dtype: torch.dtype) -> int:
    """The argmax value that names no window position (relu_max_pool2d: no gradient for this window)."""
    return 255 if dtype == torch.uint8 else -1


def block_windows(k: int, s: int, p: int) -> tuple[int, int]:
    """(first, count): the pooled rows oh = b + first + [0, count) whose windows (size k, stride s,
    padding p) can hold a row of the block of s input rows starting at b * s."""
    first = -((k - 1 - p) // s)  # ceil((p - k + 1) / s)
    last = (s - 1 + p) // s
    return first, last - first + 1


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


def _ceil_out(size: int, k: int, s: int, p: int) -> int:
    out = (size + 2 * p - k + s - 1) // s + 1
    return out - 1 if (out - 1) * s >= size + p else out  # the last window starts inside


def pooled_size(h: int, w: int, kernel, stride, padding, ceil_mode: bool = False) -> tuple[int, int]:
    """PyTorch's output size of a max-pool, with or without ``ceil_mode``."""
    if not ceil_mode:
        return pool_out_size(h, w, kernel, stride, padding)
    return (_ceil_out(h, kernel[0], stride[0], padding[0]), _ceil_out(w, kernel[1], stride[1], padding[1]))


def is_ceil(input_hw, output_hw, kernel, stride, padding) -> bool:
    """Whether an output of this size came from ``ceil_mode=True`` (it has a window the floor rule lacks)."""
    return tuple(output_hw) != pool_out_size(input_hw[0], input_hw[1], kernel, stride, padding)


def window_masks(input_hw, output_hw, kernel, stride, padding) -> tuple[bool, bool]:
    """(rows, columns): whether some window reaches outside the input along that axis (padding, or
    ceil_mode's last window), so that the kernels must mask it."""
    return tuple(p > 0 or (o - 1) * s - p + k > i
                 for i, o, k, s, p in zip(input_hw, output_hw, kernel, stride, padding))


def check_pool_args(op: str, x: torch.Tensor, kernel_size, stride, padding, dilation=1, ceil_mode=False,
                    return_indices=False):
    """``pool_args`` plus the arguments of ``F.max_pool2d`` that the kernels do not take (an error that
    names the alternative) and ``ceil_mode``. Returns (kernel, stride, padding, out_hw)."""
    if _pair(op, "dilation", dilation) != (1, 1):
        raise ValueError(f"{op}: dilation={dilation!r} is not supported (only 1); use "
                         f"torch.nn.functional.max_pool2d(..., dilation=...) instead")
    if return_indices:
        raise ValueError(f"{op}: return_indices=True is not supported (the op keeps a one-byte position "
                         f"inside each window, not PyTorch's int64 flat indices); use "
                         f"torch.nn.functional.max_pool2d(..., return_indices=True) instead")
    if not ceil_mode:
        return pool_args(op, x, kernel_size, stride, padding)
    # pool_args checks against the floor size, which may be 0 where ceil_mode's is 1: check the arguments
    # on an input large enough for any window (a view of one element), then size the real input
    h, w = x.shape[-2:]
    big = max(h, w) + 2 * max(_pair(op, "kernel_size", kernel_size))
    kernel, stride, padding, _ = pool_args(op, x.new_empty(()).expand(1, 1, big, big), kernel_size, stride,
                                           padding)
    out = pooled_size(h, w, kernel, stride, padding, True)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: output size {out} is too small for input {tuple(x.shape)} with "
                         f"kernel_size={kernel}, stride={stride}, padding={padding}, ceil_mode=True")
    return kernel, stride, padding, out


def pooled_outputs(x, kernel, stride, padding, relu: bool = False, ceil_mode: bool = False):
    """Empty (pooled output, argmax) in x's memory format: the real op's and the fake one's."""
    fmt = memory_format(x)
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, w, kernel, stride, padding, ceil_mode)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    am = torch.empty((n, c, oh, ow), dtype=argmax_dtype(kernel, relu), device=x.device, memory_format=fmt)
    return y, am


def input_grad(dy, am, x, input_hw):
    """Empty input gradient in the input's memory format (the argmax's when x is not saved)."""
    fmt = memory_format(am) if x is None else memory_format(x)
    return torch.empty((dy.shape[0], dy.shape[1], *input_hw), dtype=dy.dtype, device=dy.device,
                       memory_format=fmt)


def pool_forward_torch(v, kernel, stride, padding, y, am):
    """The CPU path of every pooling forward: pool v (already relu'd / normalised) into y and am (whose
    size says whether it is ceil_mode's)."""
    ceil = is_ceil(v.shape[2:], y.shape[2:], kernel, stride, padding)
    out, flat = F.max_pool2d(v, kernel, stride, padding, ceil_mode=ceil, return_indices=True)
    y.copy_(out)
    am.copy_(_flat_to_local(flat, v.shape[3], kernel, stride, padding))
    return y, am


def pool_backward_torch(dy, am, input_hw, kernel, stride, padding):
    """The CPU path's gradient of the pooled input, in float32 (float64 for float64), from the argmax."""
    n, c = dy.shape[:2]
    h, w = input_hw
    compute = torch.float64 if dy.dtype == torch.float64 else torch.float32  # as the kernels sum
    shape_only = torch.empty(1, dtype=compute, device=dy.device).expand(n, c, h, w)
    ceil = is_ceil(input_hw, dy.shape[2:], kernel, stride, padding)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        dy.to(compute), shape_only, list(kernel), list(stride), list(padding), [1, 1], ceil,
        _local_to_flat(am, w, kernel, stride, padding))
