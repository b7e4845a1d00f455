"""kernels.relu_max_pool2d == F.max_pool2d(F.relu(x)), what the ReLU adds to max_pool2d: the many ties
at 0 that it makes out of negatives, the sign of a pooled zero, NaN (torch.relu keeps NaN, and PyTorch's
ReLU backward passes the gradient at NaN), -inf, padding, and the byte that marks a window without a
positive element. (Its pooling, shared with max_pool2d: tests/test_ops_maxpool.py; what every op keeps:
tests/test_op_contracts.py.)"""

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference
from tests._utils import PATHS, bits, custom_op, make_grad, make_values, on_path, to_memory_format
from tests.test_ops_maxpool import check_max_pool2d

OP = "relu_max_pool2d"


def test_reference_is_pytorchs_composition():
    """kernels.reference.relu_max_pool2d is PyTorch's F.max_pool2d(F.relu(x)) (keeps NaN and -0.0, maps
    negatives to +0.0; ties to the first maximum, the last NaN wins)."""
    def pytorch(x, kernel_size=3, stride=2, padding=0):
        return F.max_pool2d(F.relu(x), kernel_size, stride, padding)

    x = make_values((2, 3, 9, 8), "special", 23)
    for args in [(), (3, 2, 0), ((2, 3), (1, 2), (1, 1)), (3, None, 1)]:
        assert torch.equal(bits(reference.relu_max_pool2d(x, *args)), bits(pytorch(x, *args)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_negative_windows_give_zero_and_no_gradient(path, fmt):
    """Every input <= 0: every output is a zero (+0.0 unless the window's first element is -0.0, as
    PyTorch's first-maximum rule over relu's values gives), and no gradient reaches the input: not to
    the window's first element (where PyTorch's max-pool sends it) nor anywhere else."""
    x = -torch.rand(2, 3, 7, 6) - 0.25
    x[0, :, ::2, ::3] = -0.0
    x[1, :, 1::2, :] = 0.0
    x[1, 2] = -0.0
    for kernel, stride, padding in [(3, 2, 0), (3, 2, 1), (2, 1, 1), ((1, 3), (2, 1), (0, 1))]:
        g = make_grad(reference.relu_max_pool2d(x, kernel, stride, padding).shape, 9, torch.float32)
        out, grad = check_max_pool2d(path, to_memory_format(x, fmt), kernel, stride, padding,
                                     op=OP, grad_out=to_memory_format(g, fmt))
        assert (out == 0).all()
        assert torch.signbit(out[1, 2]).all(), "a window of -0.0 pools to -0.0 (relu(-0.0) = -0.0)"
        assert (grad == 0).all(), f"gradient reached a non-positive input: {grad.abs().max()}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_relu_max_pool2d_sign_of_zero_as_pytorch(path, dtype):
    """Windows with no positive element, whose first element is +0 (from a negative), -0.0 or +0.0:
    relu(-0.5) = +0.0, relu(-0.0) = -0.0, and a later zero never beats an earlier one. (ReLU after the
    pool instead, relu(max(x)), would give -0.0 for [-0.5, -0.0].)"""
    rows = [[-0.5, -0.0], [-0.0, -0.5], [-0.0, 0.0], [0.0, -0.0], [-2.0, -1.0], [-0.0, -0.0]]
    x = torch.tensor(rows, dtype=dtype).reshape(1, len(rows), 1, 2)
    ones = torch.ones(1, len(rows), 1, 1, dtype=dtype)
    out, _ = check_max_pool2d(path, x, (1, 2), 1, 0, grad_out=ones, op=OP)
    assert torch.signbit(out).flatten().tolist() == [False, True, True, False, False, True]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_relu_max_pool2d_nan_inf(path, dtype):
    """relu(NaN) = NaN beats every value (+inf too) and the last NaN of a window takes the gradient
    (PyTorch's ReLU backward, ``where(relu(x) <= 0, 0, g)``, lets it through); -inf pools as 0 without
    gradient; +inf wins over finite values."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[nan, -1.0, nan, 4.0],
                      [-2.0, nan, -0.0, inf],
                      [1.0, -1.0, -inf, 3.0],
                      [-inf, -5.0, -inf, nan]], dtype=dtype).reshape(1, 1, 4, 4).repeat(2, 3, 1, 1)
    x[1, 1] = x[1, 1].flip(-1)
    x[1, 2] = -inf
    x[1, 2, 2, 2] = nan
    for kernel, stride, padding in [(3, 1, 0), (2, 2, 0), (3, 2, 1), ((1, 4), (1, 1), (0, 2)), (4, 1, 0)]:
        out, grad = check_max_pool2d(path, x, kernel, stride, padding, seed=3, op=OP)
        assert out.isnan().any()
        assert not torch.isneginf(out).any(), "relu(-inf) = 0"
        assert (grad[x.isnan()] != 0).any(), "no gradient reached a NaN that won its window"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_padding_never_wins(path, fmt):
    """Windows that start in the padding, over negative values: the output is relu's 0 of a real
    element, never a padded value, and no gradient."""
    x = torch.full((1, 2, 3, 3), -1.0)
    x[0, 1, 2, 2] = 2.0
    for kernel, stride, padding in [(2, 1, 1), (3, 2, 1), (3, 3, 1)]:
        out, grad = check_max_pool2d(path, to_memory_format(x, fmt), kernel, stride, padding, seed=4, op=OP)
        assert (out[0, 0] == 0).all() and not torch.signbit(out[0, 0]).any()


def test_relu_max_pool2d_backward_follows_pytorch_relu_rule():
    """relu's backward is ``threshold_backward(grad, relu(x), 0)``: the gradient passes where relu(x) > 0
    and where it is NaN, never at +-0. The saved byte marks windows whose maximum is not positive (255),
    so that no gradient reaches them; NaN windows keep their argmax."""
    nan = float("nan")
    x = torch.tensor([[-1.0, -0.0, 0.0, 2.0],
                      [nan, -3.0, 0.0, -0.0]]).reshape(2, 1, 1, 4)
    for path in PATHS:
        xk = x.clone().requires_grad_()
        with on_path(path):
            out = kernels.relu_max_pool2d(xk, (1, 2), (1, 2), 0)
            (grad,) = torch.autograd.grad(out, xk, torch.ones_like(out))
        xr = x.clone().requires_grad_()
        ref = torch.nn.functional.max_pool2d(torch.relu(xr), (1, 2), (1, 2))
        (ref_grad,) = torch.autograd.grad(ref, xr, torch.ones_like(ref))
        assert torch.equal(bits(out), bits(ref)), path
        assert torch.equal(grad, ref_grad), f"{path}: {grad.flatten()} != {ref_grad.flatten()}"
        assert grad.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        with on_path(path):
            _, am = custom_op("relu_max_pool2d")(x, [1, 2], [1, 2], [0, 0])
        assert am.flatten().tolist() == [255, 1, 0, 255]
