"""kernels.relu_max_pool2d == F.max_pool2d(F.relu(x)): output sizes, values exact and bit for bit (the
sign of zero included) in every dtype, the many ties at 0 that the ReLU makes out of negatives, NaN
(torch.relu keeps NaN, and PyTorch's ReLU backward passes the gradient at NaN), +-inf, padding, the
gradient's destination, gradcheck, opcheck, torch.compile, one saved byte per output, bad and empty
input.

The definition is PyTorch's own ``F.max_pool2d(F.relu(x), ...)`` (``torch_relu_max_pool2d`` below);
``kernels.reference.relu_max_pool2d`` is checked against it separately. Every op call goes through
``kernels.relu_max_pool2d`` at call time: until the op exists each test fails with AttributeError
(collection itself does not)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

import kernels
from kernels import reference
from tests._utils import (
    EXACT,
    PATHS,
    VALUE_KINDS,
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
    pool_out_size,
    pool_params,
    pool_shapes,
    ref_forward_backward,
    saved_storages,
    seeds,
    to_memory_format,
)
from tests.test_ops_maxpool import BAD_POOL_PARAMS, pool_grad_tol

ERRORS = (TypeError, ValueError, RuntimeError)
FLOAT_DTYPES_AND_64 = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def relu_max_pool2d(x, *args, **kwargs):
    """The op under test, looked up at call time."""
    return kernels.relu_max_pool2d(x, *args, **kwargs)


def torch_relu_max_pool2d(x, kernel_size=3, stride=2, padding=0):
    """The definition: PyTorch's ReLU (keeps NaN and -0.0, maps negatives to +0.0), then its max-pool
    (ties to the first maximum in row-major window order, the last NaN wins)."""
    return F.max_pool2d(F.relu(x), kernel_size, stride, padding)


def make_relu_values(shape, kind: str, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """``make_values``'s kinds, plus "nonpositive": -|N(0, 1)| with 20% +0.0, 20% -0.0 and 5% positive
    values, so that most windows hold nothing but zeros after the ReLU and the sign of the pooled zero
    is decided by the first-maximum rule (relu(-0.5) = +0.0, relu(-0.0) = -0.0)."""
    if kind != "nonpositive":
        return make_values(shape, kind, seed, dtype, scale)
    g = torch.Generator().manual_seed(seed)
    x = -torch.randn(shape, generator=g).abs() * scale
    u = torch.rand(shape, generator=g)
    x = torch.where(u < 0.2, torch.zeros_like(x), x)
    x = torch.where((u >= 0.2) & (u < 0.4), torch.full_like(x, -0.0), x)
    x = torch.where(u >= 0.95, torch.rand(shape, generator=g) + 0.5, x)
    return x.to(dtype)


relu_value_kinds = st.sampled_from([*VALUE_KINDS, "nonpositive"])


def check_relu_max_pool2d(path, x, kernel, stride, padding, grad_fmt="contiguous", seed=0, grad_out=None):
    dtype = x.dtype

    def grad_out_fn(out):
        if grad_out is not None:
            return grad_out
        return to_memory_format(make_grad(out.shape, seed, dtype), grad_fmt)

    with on_path(path):
        out, grad, g = op_forward_backward(relu_max_pool2d, x, grad_out_fn, kernel, stride, padding)
    ref, ref_grad = ref_forward_backward(torch_relu_max_pool2d, x, g, kernel, stride, padding)
    name = f"relu_max_pool2d {path} {tuple(x.shape)} {dtype} kernel={kernel} stride={stride} " \
           f"padding={padding}"
    assert out.shape == (*x.shape[:2], *pool_out_size(*x.shape[2:], kernel, stride, padding)), name
    assert out.dtype == dtype, name
    assert_close_verbose(out, ref, EXACT, name=name + " forward")
    assert torch.equal(bits(out), bits(ref)), name + ": selected values differ bitwise (sign of zero?)"
    assert_memory_format(out, x, name)
    assert_close_verbose(grad, ref_grad, pool_grad_tol(dtype, kernel, stride, g), name=name + " backward")
    return out, grad


# ------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("path", PATHS)
@examples(20)
@given(params=pool_params(), dtype=dtypes, fmt=memory_formats, grad_fmt=memory_formats, kind=relu_value_kinds,
       seed=seeds, data=st.data())
@example(params=(3, 2, 0), dtype=torch.float32, fmt="contiguous", grad_fmt="contiguous", kind="ties",
         seed=0, data=None)
@example(params=((3, 2), (1, 2), (1, 0)), dtype=torch.bfloat16, fmt="channels_last", grad_fmt="sliced",
         kind="special", seed=1, data=None)
@example(params=(2, 1, 1), dtype=torch.float16, fmt="transposed", grad_fmt="channels_last",
         kind="nonpositive", seed=2, data=None)
def test_relu_max_pool2d_matches_reference(path, params, dtype, fmt, grad_fmt, kind, seed, data):
    """Ties, zeros of both signs, negatives (0 after the ReLU: windows of ties at 0), +-inf and NaN:
    forward exact bit for bit, backward to the element PyTorch's autograd sends it to (the first
    positive maximum; nowhere when the maximum is 0; the last NaN, as PyTorch's ReLU backward passes
    the gradient at NaN)."""
    kernel, stride, padding = params
    shape = data.draw(pool_shapes(kernel, padding)) if data is not None else (2, 5, 13, 11)
    x = to_memory_format(make_relu_values(shape, kind, seed, dtype), fmt)
    check_relu_max_pool2d(path, x, kernel, stride, padding, grad_fmt, seed)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES_AND_64)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_paper_config_with_ties(path, dtype, fmt):
    """3x3 stride 2 on 13x13 (-> 6x6, conv5's pool) and 27x27 (-> 13x13), integers in [-3, 3]: exact
    positive ties and windows of zeros."""
    for shape in [(2, 3, 13, 13), (1, 2, 27, 27)]:
        x = to_memory_format(make_relu_values(shape, "ties", 42, dtype), fmt)
        check_relu_max_pool2d(path, x, 3, 2, 0, seed=1)


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
        g = make_grad(torch_relu_max_pool2d(x, kernel, stride, padding).shape, 9, torch.float32)
        out, grad = check_relu_max_pool2d(path, to_memory_format(x, fmt), kernel, stride, padding,
                                          grad_out=to_memory_format(g, fmt))
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
    out, _ = check_relu_max_pool2d(path, x, (1, 2), 1, 0, grad_out=ones)
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
        out, grad = check_relu_max_pool2d(path, x, kernel, stride, padding, seed=3)
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
        out, grad = check_relu_max_pool2d(path, to_memory_format(x, fmt), kernel, stride, padding, seed=4)
        assert (out[0, 0] == 0).all() and not torch.signbit(out[0, 0]).any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel,padding", [((16, 16), (8, 0)), ((17, 16), (3, 8))])
def test_relu_max_pool2d_large_windows(path, kernel, padding):
    """Windows of 256 elements (the largest whose position fits one byte) and of more than 256, with
    ties and negatives: the saved argmax must still name the right element."""
    x = make_relu_values((1, 2, kernel[0] + 1, 2 * kernel[1] - 2), "ties", 17, torch.float32)
    check_relu_max_pool2d(path, x, kernel, None, padding, seed=5)


@pytest.mark.parametrize("fwd_path,bwd_path", [("triton", "torch"), ("torch", "triton")])
def test_relu_max_pool2d_saved_argmax_means_the_same_on_both_paths(fwd_path, bwd_path):
    """The argmax (and whatever marks a window without a positive element) saved by the forward on one
    path is read by the backward on the other."""
    x = to_memory_format(make_relu_values((2, 5, 9, 8), "ties", 19, torch.float32), "channels_last")
    g = make_grad((2, 5, 5, 4), 19, torch.float32)
    results = []
    for paths in [(fwd_path, fwd_path), (fwd_path, bwd_path)]:
        xk = x.detach().requires_grad_()
        with on_path(paths[0]):
            out = relu_max_pool2d(xk, 3, 2, 1)
        with on_path(paths[1]):
            (grad,) = torch.autograd.grad(out, xk, g)
        results.append(grad)
    assert_close_verbose(results[1], results[0], EXACT, name=f"relu_max_pool2d {fwd_path}->{bwd_path}")
    assert_close_verbose(results[0], ref_forward_backward(torch_relu_max_pool2d, x, g, 3, 2, 1)[1],
                         pool_grad_tol(torch.float32, 3, 2, g), name="against PyTorch")


@pytest.mark.parametrize("path", PATHS)
def test_relu_max_pool2d_default_arguments_and_stride_none(path):
    x = make_relu_values((1, 3, 11, 9), "normal", 5)
    with on_path(path):
        assert torch.equal(relu_max_pool2d(x), torch_relu_max_pool2d(x, 3, 2, 0))
        assert torch.equal(relu_max_pool2d(x, 3, None), torch_relu_max_pool2d(x, 3, None))
        assert torch.equal(relu_max_pool2d(x, [2, 3], [1, 2], [1, 0]),
                           torch_relu_max_pool2d(x, (2, 3), (1, 2), (1, 0)))
        assert relu_max_pool2d(x, (2, 3), None).shape == (1, 3, 5, 3)


def test_relu_max_pool2d_public_signature_and_reference():
    """The same signature as max_pool2d; kernels.reference.relu_max_pool2d is PyTorch's composition."""
    import inspect

    sig = inspect.signature(kernels.relu_max_pool2d)
    assert [(p.name, p.default) for p in sig.parameters.values()] == [
        ("x", inspect.Parameter.empty), ("kernel_size", 3), ("stride", 2), ("padding", 0), ("dilation", 1),
        ("ceil_mode", False), ("return_indices", False)]
    x = make_relu_values((2, 3, 9, 8), "special", 23)
    for args in [(), (3, 2, 0), ((2, 3), (1, 2), (1, 1)), (3, None, 1)]:
        assert torch.equal(bits(reference.relu_max_pool2d(x, *args)), bits(torch_relu_max_pool2d(x, *args)))


# ------------------------------------------------------------------------- gradcheck, opcheck, compile


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("params", [(3, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (2, None, 0)])
def test_relu_max_pool2d_gradcheck_float64(path, params):
    """Distinct values at least 1e-2 apart and at least 5e-3 from 0 (ReLU's kink), about half of them
    negative: gradcheck's eps changes neither an argmax nor a ReLU decision."""
    kernel, stride, padding = params
    g = torch.Generator().manual_seed(0)
    x = (torch.randperm(2 * 3 * 7 * 6, generator=g).double() * 1e-2 - 1.255).reshape(2, 3, 7, 6)
    x.requires_grad_()
    with on_path(path):
        assert torch.autograd.gradcheck(lambda t: relu_max_pool2d(t, kernel, stride, padding), (x,),
                                        eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_opcheck(fmt):
    """The custom op ``alexnet_triton::relu_max_pool2d(x, kernel_size, stride, padding)``, as
    ``alexnet_triton::max_pool2d``: schema, fake tensor, autograd registration, AOT dispatch."""
    op = custom_op("relu_max_pool2d")
    x = to_memory_format(make_relu_values((2, 3, 7, 6), "normal", 6), fmt).requires_grad_()
    torch.library.opcheck(op, (x, [3, 3], [2, 2], [0, 0]))
    torch.library.opcheck(op, (x, [2, 3], [1, 2], [1, 1]))


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_compile_fullgraph(fmt):
    """torch.compile(fullgraph=True): no graph break, forward and backward equal to eager."""
    torch._dynamo.reset()

    def f(x):
        return relu_max_pool2d(x * 2.0 - 0.5, 3, 2, 0) * 3.0

    x = to_memory_format(make_relu_values((2, 4, 9, 9), "ties", 21), fmt)
    g = make_grad((2, 4, 4, 4), 21, torch.float32)
    results = []
    for fn in [f, torch.compile(f, backend="aot_eager", fullgraph=True)]:
        xk = x.detach().requires_grad_()
        out = fn(xk)
        (grad,) = torch.autograd.grad(out, xk, g)
        results.append((out.detach(), grad))
    (out, grad), (cout, cgrad) = results
    assert_close_verbose(cout, out, EXACT, name="compiled forward")
    assert_close_verbose(cgrad, grad, EXACT, name="compiled backward")
    assert_memory_format(cout, x, "compiled forward")


# ----------------------------------------------------------------------------------- saved bytes


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_max_pool2d_saves_one_byte_per_output(path, dtype, fmt):
    """Only one byte per pooled output is saved (3x3 windows): neither the input, nor the ReLU's
    output, nor the pooled output, nor an int64 index; and those bytes alone give PyTorch's gradient,
    windows of zeros and positive ties included."""
    x = to_memory_format(make_relu_values((2, 8, 7, 7), "ties", 12, dtype), fmt).requires_grad_()
    with on_path(path):
        storages, out = saved_storages(lambda t: relu_max_pool2d(t, 3, 2, 0), x)
        nbytes = sum(n for n, _, _ in storages.values())
        assert nbytes <= out.numel(), f"saved {nbytes} bytes > {out.numel()} (one per output): {storages}"
        assert all(d in (torch.uint8, torch.int8, torch.bool) for _, d, _ in storages.values()), storages
        g = make_grad(out.shape, 12, dtype)
        (grad,) = torch.autograd.grad(out, x, g)
    ref_grad = ref_forward_backward(torch_relu_max_pool2d, x, g, 3, 2, 0)[1]
    assert_close_verbose(grad, ref_grad, pool_grad_tol(dtype, 3, 2, g), name="saved-bytes backward")


# -------------------------------------------------------------------------------- empty, bad input


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_relu_max_pool2d_empty_batch(path, dtype):
    x = torch.empty(0, 4, 7, 7, dtype=dtype, requires_grad=True)
    with on_path(path):
        out = relu_max_pool2d(x, 3, 2, 1)
        assert out.shape == (0, 4, 4, 4) and out.dtype == dtype
        out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_relu_max_pool2d_rejects_integer_dtypes(path, dtype):
    with on_path(path), pytest.raises(ERRORS, match="relu_max_pool2d"):
        relu_max_pool2d(torch.ones(1, 2, 5, 5, dtype=dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(25,), (5, 5), (1, 1, 2, 5, 5)])  # 3-D (C, H, W) is taken, as F.max_pool2d
def test_relu_max_pool2d_rejects_wrong_rank(path, shape):
    with on_path(path), pytest.raises(ERRORS, match="relu_max_pool2d"):
        relu_max_pool2d(torch.ones(shape))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel,stride,padding", BAD_POOL_PARAMS)
def test_relu_max_pool2d_rejects_what_f_max_pool2d_rejects(path, kernel, stride, padding):
    x = torch.ones(1, 2, 5, 4)
    with pytest.raises(ERRORS):  # PyTorch rejects it too: the case is really invalid
        torch_relu_max_pool2d(x, kernel, stride, padding)
    with on_path(path), pytest.raises(ERRORS, match="relu_max_pool2d"):
        relu_max_pool2d(x, kernel, stride, padding)
