"""kernels.max_pool2d == F.max_pool2d: output sizes, exact values in every dtype, NaN propagation,
ties and the gradient's destination, -inf and padding, gradcheck, opcheck, bad and empty input."""

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import kernels
from kernels import reference
from tests._utils import (
    EXACT,
    PATHS,
    Tol,
    assert_close_verbose,
    assert_memory_format,
    bits,
    custom_op,
    dtypes,
    examples,
    make_grad,
    make_values,
    memory_formats,
    on_path,
    op_forward_backward,
    pair,
    pool_out_size,
    pool_params,
    pool_shapes,
    ref_forward_backward,
    seeds,
    to_memory_format,
    value_kinds,
)

ERRORS = (TypeError, ValueError, RuntimeError)


def pool_grad_tol(dtype, kernel, stride, grad_out) -> Tol:
    """Exact where no two windows can send their gradient to the same input (stride >= kernel); else
    an input's gradient is a float32 sum of up to ceil(k/s)^2 terms added in another order, rounded
    once to the dtype: 1 ulp of the dtype plus the float32 sum's rounding (normwise)."""
    kh, kw = pair(kernel)
    sh, sw = pair(stride, kernel)
    overlap = math.ceil(kh / sh) * math.ceil(kw / sw)
    if overlap == 1:
        return EXACT
    gmax = float(grad_out.abs().max()) if grad_out.numel() else 0.0
    return Tol(atol=overlap * torch.finfo(torch.float32).eps * gmax, rtol=torch.finfo(dtype).eps,
               reason=f"up to {overlap} window gradients summed in float32 in another order")


def check_max_pool2d(path, x, kernel, stride, padding, grad_fmt="contiguous", seed=0, grad_out=None):
    dtype = x.dtype

    def grad_out_fn(out):
        if grad_out is not None:
            return grad_out
        return to_memory_format(make_grad(out.shape, seed, dtype), grad_fmt)

    with on_path(path):
        out, grad, g = op_forward_backward(kernels.max_pool2d, x, grad_out_fn, kernel, stride, padding)
    ref, ref_grad = ref_forward_backward(reference.max_pool2d, x, g, kernel, stride, padding)
    name = f"max_pool2d {path} {tuple(x.shape)} {dtype} kernel={kernel} stride={stride} padding={padding}"
    assert out.shape == (*x.shape[:2], *pool_out_size(*x.shape[2:], kernel, stride, padding)), name
    assert_close_verbose(out, ref, EXACT, name=name + " forward")
    assert torch.equal(bits(out), bits(ref)), name + ": selected values differ bitwise (sign of zero?)"
    assert_memory_format(out, x, name)
    assert_close_verbose(grad, ref_grad, pool_grad_tol(dtype, kernel, stride, g), name=name + " backward")
    return out, grad


@pytest.mark.parametrize("path", PATHS)
@examples(25)
@given(params=pool_params(), dtype=dtypes, fmt=memory_formats, grad_fmt=memory_formats, kind=value_kinds,
       seed=seeds, data=st.data())
@example(params=(3, 2, 0), dtype=torch.float32, fmt="contiguous", grad_fmt="contiguous", kind="ties",
         seed=0, data=None)
@example(params=((3, 2), (1, 2), (1, 0)), dtype=torch.bfloat16, fmt="channels_last", grad_fmt="sliced",
         kind="special", seed=1, data=None)
def test_max_pool2d_matches_reference(path, params, dtype, fmt, grad_fmt, kind, seed, data):
    """Values with ties, zeros of both signs, +-inf and NaN: forward exact, backward to the same
    element as PyTorch's (ties to the first maximum in scan order, NaN wins)."""
    kernel, stride, padding = params
    shape = data.draw(pool_shapes(kernel, padding)) if data is not None else (2, 5, 13, 11)
    x = to_memory_format(make_values(shape, kind, seed, dtype), fmt)
    check_max_pool2d(path, x, kernel, stride, padding, grad_fmt, seed)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_paper_config_with_ties(path, dtype, fmt):
    """3x3 stride 2 on 13x13 (-> 6x6) and 27x27 (-> 13x13) with many ties."""
    for shape in [(2, 3, 13, 13), (1, 2, 27, 27)]:
        x = to_memory_format(make_values(shape, "ties", 42, dtype), fmt)
        check_max_pool2d(path, x, 3, 2, 0, seed=1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_all_equal_windows_send_gradient_to_first_element(path, fmt):
    """Every window a tie (zeros of both signs, then a constant): the gradient goes to the first
    element in scan order, including windows that start in the padding."""
    x = torch.zeros(1, 2, 7, 6)
    x[..., ::2, 1::2] = -0.0
    for values in [x, torch.full_like(x, 1.5)]:
        out, grad = check_max_pool2d(path, to_memory_format(values, fmt), 3, 2, 1,
                                     grad_out=torch.ones(1, 2, 4, 3))
        assert grad.sum() == out.numel()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_max_pool2d_nan_wins_and_gradient_goes_where_pytorch_sends_it(path, dtype):
    """NaN beats every value, also +inf; with several NaN in a window PyTorch's rule
    (``val > max || isnan(val)``) sends the gradient to the last NaN in scan order."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[nan, 1.0, nan, 4.0],
                      [2.0, nan, 0.0, inf],
                      [1.0, 1.0, -inf, 3.0],
                      [inf, 5.0, 1.0, nan]], dtype=dtype).reshape(1, 1, 4, 4).repeat(2, 3, 1, 1)
    x[1, 1] = x[1, 1].flip(-1)
    x[1, 2] = inf
    x[1, 2, 2, 2] = nan
    for kernel, stride, padding in [(3, 1, 0), (2, 2, 0), (3, 2, 1), ((1, 4), (1, 1), (0, 2)), (4, 1, 0)]:
        out, _ = check_max_pool2d(path, x, kernel, stride, padding, seed=3)
        assert out.isnan().any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_all_minus_inf_windows(path, fmt):
    """A window of -inf (and padding, which is not -inf but absent) gives -inf, and its gradient goes
    to the first real element of the window, never to a padded position."""
    x = torch.full((1, 2, 3, 3), float("-inf"))
    x[0, 1, 2, 2] = 0.0
    for kernel, stride, padding in [(2, 1, 1), (3, 2, 1), (3, 3, 1)]:
        out, grad = check_max_pool2d(path, to_memory_format(x, fmt), kernel, stride, padding, seed=4)
        assert torch.isneginf(out[0, 0]).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel,padding", [((16, 16), (8, 0)), ((17, 16), (3, 8))])
def test_max_pool2d_large_windows(path, kernel, padding):
    """Windows of 256 elements (the largest whose position fits one byte) and of more than 256, with
    ties: the saved argmax must still name the right element. (stride = kernel keeps the
    interpreter's gather loop short.)"""
    x = make_values((1, 2, kernel[0] + 1, 2 * kernel[1] - 2), "ties", 17, torch.float32)
    check_max_pool2d(path, x, kernel, None, padding, seed=5)


@pytest.mark.parametrize("path", PATHS)
def test_max_pool2d_default_arguments_and_stride_none(path):
    x = make_values((1, 3, 11, 9), "normal", 5)
    with on_path(path):
        assert torch.equal(kernels.max_pool2d(x), reference.max_pool2d(x, 3, 2, 0))
        assert torch.equal(kernels.max_pool2d(x, 3, None), reference.max_pool2d(x, 3, None))
        assert torch.equal(kernels.max_pool2d(x, [2, 3], [1, 2], [1, 0]),
                           reference.max_pool2d(x, (2, 3), (1, 2), (1, 0)))
        assert kernels.max_pool2d(x, (2, 3), None).shape == (1, 3, 5, 3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("params", [(3, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (2, None, 0)])
def test_max_pool2d_gradcheck_float64(path, params):
    """Distinct values (no ties) at least 1e-3 apart: gradcheck's eps cannot change the argmax."""
    kernel, stride, padding = params
    g = torch.Generator().manual_seed(0)
    x = (torch.randperm(2 * 3 * 7 * 6, generator=g).double() * 1e-2 - 1.0).reshape(2, 3, 7, 6)
    x.requires_grad_()
    with on_path(path):
        assert torch.autograd.gradcheck(lambda t: kernels.max_pool2d(t, kernel, stride, padding), (x,),
                                        eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_opcheck(fmt):
    op = custom_op("max_pool2d")
    x = to_memory_format(make_values((2, 3, 7, 6), "normal", 6), fmt).requires_grad_()
    torch.library.opcheck(op, (x, [3, 3], [2, 2], [0, 0]))
    torch.library.opcheck(op, (x, [2, 3], [1, 2], [1, 1]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_max_pool2d_empty_batch(path, dtype):
    x = torch.empty(0, 4, 7, 7, dtype=dtype, requires_grad=True)
    with on_path(path):
        out = kernels.max_pool2d(x, 3, 2, 1)
        assert out.shape == (0, 4, 4, 4) and out.dtype == dtype
        out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_max_pool2d_rejects_integer_dtypes(path, dtype):
    with on_path(path), pytest.raises(ERRORS, match="max_pool2d"):
        kernels.max_pool2d(torch.ones(1, 2, 5, 5, dtype=dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(2, 5, 5), (25,), (1, 1, 2, 5, 5)])
def test_max_pool2d_rejects_wrong_rank(path, shape):
    with on_path(path), pytest.raises(ERRORS, match="max_pool2d"):
        kernels.max_pool2d(torch.ones(shape))


BAD_POOL_PARAMS = [
    pytest.param(0, 1, 0, id="kernel0"),
    pytest.param(-1, 1, 0, id="kernel-neg"),
    pytest.param((3, 0), 1, 0, id="kernel-pair-0"),
    pytest.param(3, 0, 0, id="stride0"),
    pytest.param(3, -2, 0, id="stride-neg"),
    pytest.param(3, (2, 0), 0, id="stride-pair-0"),
    pytest.param(3, 2, -1, id="padding-neg"),
    pytest.param(3, 2, 2, id="padding-over-half-kernel"),
    pytest.param((3, 3), 1, (2, 0), id="padding-h-over-half"),
    pytest.param((2, 4), 1, (1, 3), id="padding-w-over-half"),
    pytest.param(7, 1, 0, id="output-empty"),
    pytest.param((1, 7), 1, (0, 1), id="output-width-empty"),
    pytest.param((3, 3, 3), 1, 0, id="kernel-three-values"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel,stride,padding", BAD_POOL_PARAMS)
def test_max_pool2d_rejects_what_f_max_pool2d_rejects(path, kernel, stride, padding):
    x = torch.ones(1, 2, 5, 4)
    with pytest.raises(ERRORS):  # the reference rejects it too: the case is really invalid
        reference.max_pool2d(x, kernel, stride, padding)
    with on_path(path), pytest.raises(ERRORS, match="max_pool2d"):
        kernels.max_pool2d(x, kernel, stride, padding)
