"""TEMPORARY stand-in while the Triton kernels are written: the public API on the reference ops.
Signatures are final; implementations will be replaced by the fused custom ops."""

import torch

from . import reference


def relu_lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    return reference.relu_lrn(x, size, alpha, beta, k)


def max_pool2d(x, kernel_size=3, stride=2, padding=0):
    return reference.max_pool2d(x, kernel_size, stride, padding)


def relu_lrn_max_pool2d(x, size=5, alpha=1e-4, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0):
    return reference.relu_lrn_max_pool2d(x, size, alpha, beta, k, kernel_size, stride, padding)


def dropout(x, p=0.5, training=True, seed=None):
    return reference.dropout(x, p, training)


def relu_dropout(x, p=0.5, training=True, seed=None):
    return reference.relu_dropout(x, p, training)


__all__ = ["relu_lrn", "max_pool2d", "relu_lrn_max_pool2d", "dropout", "relu_dropout", "reference", "torch"]
