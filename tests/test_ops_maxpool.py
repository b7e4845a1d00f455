"""kernels.max_pool2d == F.max_pool2d and kernels.relu_max_pool2d == F.max_pool2d(F.relu(x)) (both in
kernels/pool.py): output sizes, exact values in every dtype, NaN propagation, ties and the gradient's
destination, -inf and padding, large windows, the kernels' paths and int64 offsets, the saved argmax.
(relu_max_pool2d's own rules: tests/test_ops_relu_maxpool.py; what every op keeps, gradcheck, opcheck,
bad and empty input among it: tests/test_op_contracts.py.)"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import kernels
from kernels import reference
from tests import _utils as draws
from tests._utils import (
    EXACT,
    PATHS,
    VALUE_KINDS,
    assert_close_verbose,
    assert_memory_format,
    bits,
    custom_op,
    make_grad,
    make_values,
    on_path,
    op_forward_backward,
    pool_grad_tol,
    pool_out_size,
    ref_forward_backward,
    to_memory_format,
)


def check_max_pool2d(path, x, kernel, stride, padding, grad_fmt="contiguous", seed=0, grad_out=None,
                     op="max_pool2d"):
    """``op`` (max_pool2d or relu_max_pool2d) against its reference: forward exact bit for bit (the sign
    of zero included), backward to the element PyTorch's autograd sends it to."""
    dtype = x.dtype

    def grad_out_fn(out):
        if grad_out is not None:
            return grad_out
        return to_memory_format(make_grad(out.shape, seed, dtype), grad_fmt)

    with on_path(path):
        out, grad, g = op_forward_backward(getattr(kernels, op), x, grad_out_fn, kernel, stride, padding)
    ref, ref_grad = ref_forward_backward(getattr(reference, op), x, g, kernel, stride, padding)
    name = f"{op} {path} {tuple(x.shape)} {dtype} kernel={kernel} stride={stride} padding={padding}"
    assert out.shape == (*x.shape[:2], *pool_out_size(*x.shape[2:], kernel, stride, padding)), name
    assert_close_verbose(out, ref, EXACT, name=name + " forward")
    assert torch.equal(bits(out), bits(ref)), name + ": selected values differ bitwise (sign of zero?)"
    assert_memory_format(out, x, name)
    assert_close_verbose(grad, ref_grad, pool_grad_tol(dtype, kernel, stride, g), name=name + " backward")
    return out, grad


POOL_OPS = ["max_pool2d", "relu_max_pool2d"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", POOL_OPS)
@draws.examples(25)
@given(params=draws.pool_params(), dtype=draws.dtypes, fmt=draws.memory_formats,
       grad_fmt=draws.memory_formats, kind=st.sampled_from([*VALUE_KINDS, "nonpositive"]), seed=draws.seeds,
       data=st.data())
@example(params=(3, 2, 0), dtype=torch.float32, fmt="contiguous", grad_fmt="contiguous", kind="ties",
         seed=0, data=None)
@example(params=((3, 2), (1, 2), (1, 0)), dtype=torch.bfloat16, fmt="channels_last", grad_fmt="sliced",
         kind="special", seed=1, data=None)
@example(params=(2, 1, 1), dtype=torch.float16, fmt="transposed", grad_fmt="channels_last",
         kind="nonpositive", seed=2, data=None)
def test_max_pool2d_matches_reference(path, op, params, dtype, fmt, grad_fmt, kind, seed, data):
    """Values with ties, zeros of both signs, negatives (0 after relu_max_pool2d's ReLU: windows of ties
    at 0), +-inf and NaN: forward exact, backward to the same element as PyTorch's (ties to the first
    maximum in scan order, NaN wins; after the ReLU the first positive maximum, nowhere when the maximum
    is 0, the last NaN as PyTorch's ReLU backward passes the gradient at NaN)."""
    kernel, stride, padding = params
    shape = data.draw(draws.pool_shapes(kernel, padding)) if data is not None else (2, 5, 13, 11)
    x = to_memory_format(make_values(shape, kind, seed, dtype), fmt)
    check_max_pool2d(path, x, kernel, stride, padding, grad_fmt, seed, op=op)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op,dtype", [  # float16 and float64 in the exhaustive tier (bfloat16 is the coarser)
    pytest.param(op, dtype, marks=[pytest.mark.slow] if dtype in (torch.float16, torch.float64) else [])
    for op in POOL_OPS for dtype in [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    if op == "relu_max_pool2d" or dtype != torch.float64])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_paper_config_with_ties(path, op, dtype, fmt):
    """3x3 stride 2 on 13x13 (-> 6x6, conv5's pool) and 27x27 (-> 13x13), integers in [-3, 3]: exact
    positive ties (and windows of zeros after the ReLU). (Few channels: the planes are what matters.)"""
    for shape in [(1, 2, 13, 13), (1, 1, 27, 27)]:
        x = to_memory_format(make_values(shape, "ties", 42, dtype), fmt)
        check_max_pool2d(path, x, 3, 2, 0, seed=1, op=op)


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
@pytest.mark.parametrize("op", POOL_OPS)
@pytest.mark.parametrize("kernel,padding", [((16, 16), (8, 0)), ((17, 16), (3, 8))])
def test_max_pool2d_large_windows(path, op, kernel, padding):
    """Windows of 256 elements (the largest whose position fits one byte) and of more than 256, with
    ties (and negatives): the saved argmax must still name the right element. (stride = kernel keeps the
    interpreter's gather loop short.)"""
    x = make_values((1, 2, kernel[0] + 1, 2 * kernel[1] - 2), "ties", 17, torch.float32)
    check_max_pool2d(path, x, kernel, None, padding, seed=5, op=op)


# ------------------------------------------------------------------------ kernel paths and offsets


def _paths_case(shape, fmt, kernel, stride, padding, dtype=torch.float32, kind="ties", seed=0):
    x = to_memory_format(make_values(shape, kind, seed, dtype), fmt)
    return check_max_pool2d("triton", x, kernel, stride, padding, seed=seed)


# (shape, kernel, stride, padding): AlexNet's 3x3/2 on odd and even sizes (the separable forward with its
# carried row; the block backward with two blocks per NCHW lane and the trailing block rows), 2x2/2
# (no overlap), kernel < stride (inputs in no window), 3x3/1 (three windows per axis: the general
# gather), padding, and a 6x6 window (37+ elements: the forward's runtime window loops).
PATH_CASES = [
    ((2, 3, 13, 13), 3, 2, 0),
    ((1, 2, 12, 14), 3, 2, 0),
    ((1, 3, 9, 10), 2, 2, 0),
    ((1, 2, 11, 10), 2, 3, 1),
    ((1, 2, 10, 9), 3, 1, 1),
    ((1, 2, 11, 12), 3, 2, 1),
    ((1, 2, 13, 14), (6, 7), (2, 3), (3, 2)),
]


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,kernel,stride,padding", PATH_CASES)
def test_max_pool2d_kernel_paths(shape, kernel, stride, padding, fmt):
    _paths_case(shape, fmt, kernel, stride, padding, kind="special", seed=7)


@pytest.mark.parametrize("flag", ["_FORCE_I64", "_FORCE_BIG"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,kernel,stride,padding", [PATH_CASES[0], PATH_CASES[4], PATH_CASES[6]])
def test_max_pool2d_int64_offsets(monkeypatch, flag, fmt, shape, kernel, stride, padding):
    """The int64 code paths (plane offsets, then every offset), taken for tensors / images of 2^31
    elements, run here on small tensors."""
    from kernels import pool

    monkeypatch.setattr(pool, flag, True)
    _paths_case(shape, fmt, kernel, stride, padding, kind="special", seed=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool2d_channels_last_channel_tiles(dtype):
    """channels_last with C = 96 (tiles of 32 channels that divide C: vector loads, no channel masks) and
    C = 20 (a tile wider than C: masked channels), AlexNet's 3x3/2."""
    for c in (96, 20):
        _paths_case((1, c, 7, 9), "channels_last", 3, 2, 0, dtype=dtype, kind="special", seed=c)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_max_pool2d_saved_argmax_is_the_same_on_both_paths(fmt):
    """The Triton path's argmax bytes equal the CPU path's (PyTorch's indices in window coordinates), and
    a backward on either path reads the other's."""
    op = custom_op("max_pool2d")
    x = to_memory_format(make_values((2, 5, 9, 8), "ties", 10, torch.float32), fmt)
    configs = [([3, 3], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1]), ([2, 3], [1, 2], [1, 0])]
    for kernel, stride, padding in configs:
        y_t, am_t = op(x, kernel, stride, padding)
        with on_path("torch"):
            y_c, am_c = op(x, kernel, stride, padding)
        assert torch.equal(y_t, y_c) and am_t.dtype == am_c.dtype == torch.uint8
        assert torch.equal(am_t, am_c), f"argmax bytes differ for {kernel} {stride} {padding}"
        g = make_grad(y_t.shape, 10, torch.float32)
        bwd = torch.ops.alexnet_triton.max_pool2d_backward.default
        dx_t = bwd(g, am_c, list(x.shape[2:]), kernel, stride, padding)
        with on_path("torch"):
            dx_c = bwd(g, am_t, list(x.shape[2:]), kernel, stride, padding)
        assert_close_verbose(dx_t, dx_c, EXACT, name=f"backward across paths {kernel} {stride} {padding}")


def test_magic_division_matches_floor_division():
    """The multiply-high division that decodes lanes (kernels/pool.py ``_magic``): exact for every
    divisor and every quotient below 2^31 (Granlund and Montgomery's theorem 4.2), checked at the edges."""
    import random

    from kernels.pool import _magic

    rng = random.Random(0)
    divisors = [*range(1, 600), *(rng.randrange(1, 2**31) for _ in range(300)), 2**30, 2**30 + 1, 2**31 - 1]
    for d in divisors:
        m, s = _magic(d)
        assert 2 <= m < 2**32
        edges = {0, 1, d - 1, d, d + 1, 2 * d - 1, 2**31 - 1, 2**31 - 2}
        for q in edges | {rng.randrange(2**31) for _ in range(40)}:
            if 0 <= q < 2**31:
                assert ((2 * q * m) >> 32) >> s == q // d, (q, d)
