"""Fused Triton kernels for AlexNet's layers, as PyTorch custom ops (namespace ``alexnet_triton``).

Each op has a Triton forward and backward kernel, autograd, a fake implementation for
``torch.compile``, and a plain-PyTorch path for CPU tensors. Under ``TRITON_INTERPRET=1`` CPU
tensors run the Triton kernels themselves in Triton's interpreter (how the tests check them
without a GPU); ``triton_disabled()`` switches CPU tensors back to the plain-PyTorch path.

    relu_lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0)
    max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=False)
    relu_max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=False)
    relu_lrn_max_pool2d(x, size=5, alpha=1e-4, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0)
    dropout(x, p=0.5, training=True, seed=None)
    relu_dropout(x, p=0.5, training=True, seed=None)

and one data kernel (no autograd): ``augment(images_uint8, params, shift, crop, input_scale, dtype)``, the
training input's crop, flip, colour noise, mean, scale and cast in one pass (train/gpu_loader.py).
"""

from . import nn, reference
from ._common import HAS_TRITON, INTERPRET, triton_disabled, use_triton
from .augment import augment
from .block import relu_lrn_max_pool2d
from .dropout import dropout, relu_dropout
from .fusion import disable_compile_fusion, enable_compile_fusion
from .lrn import relu_lrn
from .patch import PatchReport, patch
from .pool import max_pool2d, relu_max_pool2d

__all__ = [
    "relu_lrn",
    "max_pool2d",
    "relu_max_pool2d",
    "relu_lrn_max_pool2d",
    "dropout",
    "relu_dropout",
    "augment",
    "reference",
    "nn",
    "patch",
    "PatchReport",
    "enable_compile_fusion",
    "disable_compile_fusion",
    "triton_disabled",
    "use_triton",
    "HAS_TRITON",
    "INTERPRET",
]
