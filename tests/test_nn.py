"""kernels.nn: the modules equal their torch.nn counterparts (forward and backward), take the same
constructor arguments and say what they hold; max_pool2d's ceil_mode and 3-D (C, H, W) input; clear
errors for what the kernels do not take (dilation, return_indices)."""

import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
import kernels.nn as knn
from tests._utils import EXACT, PATHS, Tol, assert_close_verbose, bits, make_values, on_path, to_memory_format

GRAD = Tol(atol=1e-6, rtol=1e-5, reason="float32 gradients: window sums and LRN's backward in another order")


def run(fn, x, g=None, seed=0):
    """(output, input gradient) of fn(x) with a shared random grad_output."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    if g is None:
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    (dx,) = torch.autograd.grad(y, x, g)
    return y.detach(), dx, g


# ------------------------------------------------------------------------ max_pool2d: ceil_mode, 3-D

# (shape, kernel, stride, padding, memory format, relu): windows that pass the bottom, the right or both
# edges, with and without padding, the block backward (kernel <= 2 * stride) and the general gather
CEIL_CASES = [
    ((2, 3, 8, 8), 3, 2, 0, "contiguous", False),  # AlexNet's 3x3/2 on an even size: one more window
    ((2, 3, 8, 8), 3, 2, 0, "channels_last", True),
    ((1, 4, 10, 7), 3, 2, 1, "channels_last", False),
    ((2, 2, 9, 8), (3, 2), (2, 3), (1, 0), "contiguous", True),
    ((1, 3, 12, 11), 5, 4, 2, "contiguous", False),  # general gather backward (kernel > 2 * stride: no)
    ((1, 2, 9, 9), 6, 2, 0, "channels_last", True),  # kernel > 2 * stride: the gather kernel
    ((2, 3, 2, 2), 3, 2, 0, "contiguous", False),  # floor mode has no output at all here, ceil_mode one
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CEIL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}s{c[2]}p{c[3]}-{c[4]}-relu{c[5]}")
def test_max_pool2d_ceil_mode_matches_pytorch(path, case):
    """Forward bit for bit (ties, NaN, -0.0), the gradient to the element PyTorch sends it."""
    shape, kernel, stride, padding, fmt, relu = case
    x = to_memory_format(make_values(shape, "special" if relu else "ties", 3), fmt)
    op = kernels.relu_max_pool2d if relu else kernels.max_pool2d
    with on_path(path):
        y, dx, g = run(lambda t: op(t, kernel, stride, padding, ceil_mode=True), x)
    ref, ref_dx, _ = run(lambda t: F.max_pool2d(F.relu(t) if relu else t, kernel, stride, padding,
                                                ceil_mode=True), x, g)
    name = f"{op.__name__} {path} {case}"
    assert_close_verbose(y, ref, EXACT, name=name)
    assert torch.equal(bits(y), bits(ref)), name + ": selected values differ bitwise"
    assert_close_verbose(dx, ref_dx, GRAD, name=name + " backward")


@pytest.mark.parametrize("path", PATHS)
def test_max_pool2d_takes_chw_input(path):
    x = make_values((3, 9, 8), "normal", 1)
    for relu in (False, True):
        op = kernels.relu_max_pool2d if relu else kernels.max_pool2d
        with on_path(path):
            y, dx, g = run(lambda t, op=op: op(t, 3, 2, 1), x)
        ref, ref_dx, _ = run(lambda t, relu=relu: F.max_pool2d(F.relu(t) if relu else t, 3, 2, 1), x, g)
        assert y.shape == ref.shape == (3, 5, 4)
        assert_close_verbose(y, ref, EXACT, name=f"{path} 3-D forward")
        assert_close_verbose(dx, ref_dx, GRAD, name=f"{path} 3-D backward")


@pytest.mark.parametrize("kwargs, alternative", [
    (dict(dilation=2), r"F\.max_pool2d|functional\.max_pool2d"),
    (dict(return_indices=True), r"functional\.max_pool2d\(\.\.\., return_indices=True\)"),
])
def test_max_pool2d_unsupported_arguments_name_the_alternative(kwargs, alternative):
    x = torch.randn(1, 2, 7, 7)
    for op in (kernels.max_pool2d, kernels.relu_max_pool2d):
        with pytest.raises(ValueError, match=alternative):
            op(x, 3, 2, **kwargs)
    for module in (knn.MaxPool2d, knn.ReLUMaxPool2d):
        with pytest.raises(ValueError, match=r"torch\.nn\.MaxPool2d"):
            module(3, 2, **kwargs)


# --------------------------------------------------------------------------------------- modules

def _pool_pair(relu, **kw):
    ours = (knn.ReLUMaxPool2d if relu else knn.MaxPool2d)(**kw)
    theirs = nn.MaxPool2d(**kw)
    return ours, nn.Sequential(nn.ReLU(), theirs) if relu else theirs


MODULE_PAIRS = {
    "MaxPool2d": lambda: _pool_pair(False, kernel_size=3, stride=2),
    "MaxPool2d-ceil": lambda: _pool_pair(False, kernel_size=2, stride=2, ceil_mode=True),
    "ReLUMaxPool2d": lambda: _pool_pair(True, kernel_size=3, stride=2, padding=1),
    "ReLULocalResponseNorm": lambda: (knn.ReLULocalResponseNorm(5, alpha=1e-2, k=2.0),
                                      nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(5, alpha=1e-2, k=2.0))),
    "ReLULocalResponseNormMaxPool2d": lambda: (
        knn.ReLULocalResponseNormMaxPool2d(5, 1e-2, 0.75, 2.0, kernel_size=3, stride=2),
        nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0), nn.MaxPool2d(3, 2))),
    "ReLULocalResponseNormMaxPool2d-ceil": lambda: (
        knn.ReLULocalResponseNormMaxPool2d(3, 1e-2, 0.75, 1.0, kernel_size=3, stride=2, ceil_mode=True),
        nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(3, 1e-2, 0.75, 1.0),
                      nn.MaxPool2d(3, 2, ceil_mode=True))),
    "Dropout-eval": lambda: (knn.Dropout(0.3).eval(), nn.Dropout(0.3).eval()),
    "ReLUDropout-eval": lambda: (knn.ReLUDropout(0.3).eval(),
                                 nn.Sequential(nn.ReLU(), nn.Dropout(0.3)).eval()),
}


@pytest.mark.parametrize("path, name", [("torch", n) for n in sorted(MODULE_PAIRS)] + [
    ("triton", "MaxPool2d-ceil"), ("triton", "ReLULocalResponseNormMaxPool2d-ceil")])
def test_module_matches_torch_nn(path, name):
    """The CPU path for each module (the ops' kernels have their own tests); the Triton kernels where a
    module combines them differently (ceil_mode)."""
    ours, theirs = MODULE_PAIRS[name]()
    x = make_values((2, 6, 10, 10), "normal", 5).contiguous(memory_format=torch.channels_last)
    with on_path(path):
        y, dx, g = run(ours, x)
    ref, ref_dx, _ = run(theirs, x, g)
    assert_close_verbose(y, ref, GRAD, name=f"{name} {path} forward")
    assert_close_verbose(dx, ref_dx, GRAD, name=f"{name} {path} backward")


@pytest.mark.parametrize("ours, theirs", [(knn.MaxPool2d, nn.MaxPool2d), (knn.ReLUMaxPool2d, nn.MaxPool2d),
                                          (knn.ReLULocalResponseNorm, nn.LocalResponseNorm),
                                          (knn.Dropout, nn.Dropout), (knn.ReLUDropout, nn.Dropout)])
def test_module_takes_torch_nn_constructor_arguments(ours, theirs):
    """The same parameter names, order and defaults as the torch.nn module (a drop-in by keyword or
    position)."""
    mine = [(p.name, p.default) for p in inspect.signature(ours).parameters.values()]
    torch_nn = [(p.name, p.default) for p in inspect.signature(theirs).parameters.values()]
    assert mine == torch_nn


def test_module_extra_repr():
    assert repr(knn.MaxPool2d(3, 2, ceil_mode=True)) == \
        "MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)"
    assert repr(knn.ReLULocalResponseNorm(5, k=2.0)) == \
        "ReLULocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)"
    assert repr(knn.ReLULocalResponseNormMaxPool2d(5, k=2.0, kernel_size=3, stride=2)) == (
        "ReLULocalResponseNormMaxPool2d(5, alpha=0.0001, beta=0.75, k=2.0, kernel_size=3, stride=2, "
        "padding=0, ceil_mode=False)")
    assert repr(knn.ReLUDropout(0.25)) == "ReLUDropout(p=0.25, inplace=False)"
    assert not list(knn.ReLULocalResponseNormMaxPool2d(5).parameters())


@pytest.mark.parametrize("relu", [False, True])
def test_dropout_module_keep_rate_and_scale(relu):
    """Training mode: kept values scaled by 1 / (1 - p), about 1 - p of them kept; eval mode: identity
    (after the ReLU)."""
    m = (knn.ReLUDropout if relu else knn.Dropout)(0.25)
    x = torch.full((64, 1024), 2.0)
    with kernels.triton_disabled():  # the CPU path draws the kernels' Philox stream
        y = m(x)
    kept = y != 0
    assert torch.all(y[kept] == 2.0 / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    m.eval()
    x = torch.randn(4, 8)
    assert torch.equal(m(x), F.relu(x) if relu else x)


def test_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="ReLULocalResponseNorm"):
        knn.ReLULocalResponseNorm(0)
    with pytest.raises(ValueError, match="Dropout"):
        knn.Dropout(1.5)
