"""``torch.nn`` drop-ins for the fused ops: modules without parameters, with the constructor arguments of
the ``torch.nn`` modules they replace where one exists.

    ReLULocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)    nn.ReLU() -> nn.LocalResponseNorm(...)
    MaxPool2d(kernel_size, stride=None, padding=0, ceil_mode=False)       nn.MaxPool2d(...)
    ReLUMaxPool2d(kernel_size, stride=None, padding=0, ceil_mode=False)   nn.ReLU() -> nn.MaxPool2d(...)
    ReLULocalResponseNormMaxPool2d(size, alpha, beta, k, kernel_size, stride, padding, ceil_mode)
    Dropout(p=0.5)                                                 nn.Dropout(p)
    ReLUDropout(p=0.5)                                             nn.ReLU() -> nn.Dropout(p)

``dilation`` other than 1 and ``return_indices=True`` raise a ValueError at construction (use
``nn.MaxPool2d``). ``inplace`` is accepted and recorded: the fused ops never write their input (they keep
nothing an in-place op would save). ``kernels.patch`` swaps these in for runs of ``torch.nn`` modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import _pair, check_lrn_args, check_p
from .block import relu_lrn_max_pool2d
from .dropout import dropout, relu_dropout
from .lrn import relu_lrn
from .pool import max_pool2d, relu_max_pool2d


def _check_pool(name: str, dilation, return_indices) -> None:
    if _pair(name, "dilation", dilation) != (1, 1):
        raise ValueError(f"{name}: dilation={dilation!r} is not supported (only 1); use torch.nn.MaxPool2d")
    if return_indices:
        raise ValueError(f"{name}: return_indices=True is not supported (the fused op keeps a one-byte "
                         f"position inside each window, not int64 indices); use torch.nn.MaxPool2d")


def _pool_repr(m) -> str:
    return f"kernel_size={m.kernel_size}, stride={m.stride}, padding={m.padding}, ceil_mode={m.ceil_mode}"


class ReLULocalResponseNorm(nn.Module):
    """``nn.LocalResponseNorm(size, alpha, beta, k)(relu(x))`` on (N, C, H, W) input (alpha divided by
    ``size``, as torch.nn's); saves only its input."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        check_lrn_args(type(self).__name__, size, alpha, beta, k)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class MaxPool2d(nn.Module):
    """``nn.MaxPool2d`` on (N, C, H, W) or (C, H, W) input; saves one byte per output."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        _check_pool(type(self).__name__, dilation, return_indices)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def extra_repr(self) -> str:
        return _pool_repr(self)


class ReLUMaxPool2d(MaxPool2d):
    """``nn.MaxPool2d(...)(relu(x))`` in one kernel each way; saves one byte per output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)


class ReLULocalResponseNormMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel_size, stride, padding)(nn.LocalResponseNorm(size, alpha, beta, k)(relu(x)))``
    in one kernel each way (AlexNet's block after conv1 and conv2); saves its input and one byte per
    pooled output. With ``ceil_mode=True`` it runs ``relu_lrn`` then ``max_pool2d`` (the same values and saved
    bytes, one more pass over memory: the fused block does not take ceil_mode yet)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, kernel_size=3,
                 stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        check_lrn_args(type(self).__name__, size, alpha, beta, k)
        _check_pool(type(self).__name__, dilation, False)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ceil_mode:
            return max_pool2d(relu_lrn(x, self.size, self.alpha, self.beta, self.k), self.kernel_size,
                              self.stride, self.padding, ceil_mode=True)
        return relu_lrn_max_pool2d(x, self.size, self.alpha, self.beta, self.k, self.kernel_size, self.stride,
                                   self.padding)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, " + _pool_repr(self)


class Dropout(nn.Module):
    """``nn.Dropout(p)``: the same keep rate and 1 / (1 - p) scaling, a counter-based mask (nothing kept
    for backward but the seed); the seed is drawn from torch's generator at each call."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = check_p(type(self).__name__, p)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class ReLUDropout(Dropout):
    """``nn.Dropout(p)(relu(x))`` in one kernel each way; saves only its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_dropout(x, self.p, self.training)
