"""The reference for every fused op, written with PyTorch's own ops.

One module, shared by the tests, the benchmark and the model's ``ops="eager"`` path, so that
"equal to the reference" means the same thing everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
             k: float = 2.0) -> torch.Tensor:
    """ReLU then local response normalisation across channels (alpha divided by ``size``)."""
    return F.local_response_norm(F.relu(x), size, alpha, beta, k)


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0, ceil_mode=False) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


def relu_max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, padding=0, ceil_mode=False) -> torch.Tensor:
    """ReLU then max-pool (AlexNet's conv5 -> pool): PyTorch's ReLU keeps NaN and -0.0."""
    return F.max_pool2d(F.relu(x), kernel_size, stride, padding, ceil_mode=ceil_mode)


def relu_lrn_max_pool2d(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0, kernel_size=3, stride=2, padding=0) -> torch.Tensor:
    return F.max_pool2d(relu_lrn(x, size, alpha, beta, k), kernel_size, stride, padding)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    return F.dropout(x, p, training)


def relu_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    return F.dropout(F.relu(x), p, training)


def dropout_with_mask(x: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with a given keep-mask: the reference for a fused dropout whose mask was
    recovered from its output."""
    if p >= 1.0:
        return x * 0.0
    return x * mask.to(x.dtype) * (1.0 / (1.0 - p))
