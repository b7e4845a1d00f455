"""kernels.relu_lrn_max_pool2d == max_pool2d(relu_lrn(x)) of the op's own relu_lrn values: forward bit for
bit and backward against that composition, forward against PyTorch within tolerance; exact ties (the
gradient goes where PyTorch's sends it), NaN / inf, the NCHW patch walks, offsets past 2^31 on a GPU.
(The channels_last kernels: tests/test_ops_block_cl.py; what every op keeps, saved bytes, gradcheck,
opcheck, bad and empty input among it: tests/test_op_contracts.py.)"""

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
    TOLERANCES,
    assert_close_verbose,
    assert_memory_format,
    bits,
    custom_op,
    grad_tol,
    make_grad,
    make_values,
    on_path,
    op_forward_backward,
    pair,
    pool_out_size,
    ref_forward_backward,
    to_memory_format,
)


def own_composition(path, x, lrn, pool, g):
    """``max_pool2d(relu_lrn(x))`` from the op's own relu_lrn on ``path``: the pooled values, and the input
    gradient through PyTorch's max-pool backward on those same values and the op's own relu_lrn
    backward (``g``: the pooled gradient, None: no backward). The pool is PyTorch's: it selects the
    same bits as ``kernels.max_pool2d`` (tests/test_ops_maxpool.py checks that bit for bit), without
    another interpreted launch."""
    kernel, stride, padding = pool
    with on_path(path):
        xk = x.detach().requires_grad_(g is not None)
        out = reference.max_pool2d(kernels.relu_lrn(xk, *lrn), kernel, stride, padding)
        grad = None
        if g is not None:
            (grad,) = torch.autograd.grad(out, xk, g)
    return out.detach(), grad


def check_block(path, x, lrn, pool, grad_fmt="contiguous", seed=0, pytorch_grad=False):
    """The fused block is defined as the max-pool of its own relu_lrn values (the lead's decision: the
    LRN value the kernel computes and PyTorch's may differ by an ulp, and at a tie that moves the
    argmax, so no tolerance can compare its gradient with PyTorch's):

    - forward == ``max_pool2d(kernels.relu_lrn(x))`` bit for bit, relu_lrn on the same path;
    - input gradient (finite inputs) == the gradient of ``reference.max_pool2d(kernels.relu_lrn(x))``,
      the op's own relu_lrn backward behind PyTorch's max-pool backward on the same values, within
      ``grad_tol``: equal argmax in every window whose winner gets a gradient (a window of zeros
      passes none, whichever element it names);
    - forward == PyTorch's reference (float32 on the same inputs, rounded) within the dtype's
      tolerance, NaN / inf positions exactly;
    - with ``pytorch_grad`` (inputs built without near ties): the gradient == PyTorch's too."""
    size, alpha, beta, k = lrn
    kernel, stride, padding = pool
    dtype = x.dtype
    finite = bool(torch.isfinite(x).all())

    def grad_out_fn(out):
        return to_memory_format(make_grad(out.shape, seed, dtype), grad_fmt)

    with on_path(path):
        out, grad, g = op_forward_backward(kernels.relu_lrn_max_pool2d, x, grad_out_fn if finite else None,
                                           size, alpha, beta, k, kernel, stride, padding)
    own, own_grad = own_composition(path, x, lrn, pool, g)
    ref, ref_grad = ref_forward_backward(reference.relu_lrn_max_pool2d, x, g if pytorch_grad else None,
                                         size, alpha, beta, k, kernel, stride, padding)
    name = (f"relu_lrn_max_pool2d {path} {tuple(x.shape)} {dtype} size={size} alpha={alpha} beta={beta} "
            f"k={k} kernel={kernel} stride={stride} padding={padding}")
    assert out.shape == (*x.shape[:2], *pool_out_size(*x.shape[2:], kernel, stride, padding)), name
    assert_close_verbose(out, own, EXACT, name=name + " forward vs max_pool2d(relu_lrn(x))")
    assert torch.equal(bits(out), bits(own)), name + ": forward differs bitwise from max_pool2d(relu_lrn(x))"
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=name + " forward vs PyTorch")
    assert_memory_format(out, x, name)
    if finite:
        assert_close_verbose(grad, own_grad, grad_tol(dtype, own_grad),
                             name=name + " backward vs max_pool2d(relu_lrn(x))")
        if pytorch_grad:
            assert_close_verbose(grad, ref_grad, grad_tol(dtype, ref_grad), name=name + " backward, PyTorch")
    return out, grad


@pytest.mark.parametrize("path", PATHS)
@draws.examples(12)
@given(pool=draws.pool_params(max_k=4), size=draws.lrn_sizes, alpha=draws.lrn_alphas, beta=draws.lrn_betas,
       k=draws.lrn_ks, dtype=draws.dtypes, fmt=draws.memory_formats, grad_fmt=draws.memory_formats,
       kind=draws.value_kinds, seed=draws.seeds,
       scale=st.sampled_from([1.0, 10.0]), data=st.data())
@example(pool=(3, 2, 0), size=5, alpha=1e-4, beta=0.75, k=2.0, dtype=torch.float32, fmt="contiguous",
         grad_fmt="contiguous", kind="normal", seed=0, scale=10.0, data=None)
@example(pool=((3, 4), (1, 1), (1, 1)), size=4, alpha=1.0, beta=1.0, k=2.0, dtype=torch.float32,
         fmt="contiguous", grad_fmt="contiguous", kind="ties", seed=14244396, scale=10.0,
         data=(2, 5, 5, 6))
def test_relu_lrn_max_pool2d_matches_reference(path, pool, size, alpha, beta, k, dtype, fmt, grad_fmt, kind,
                                               seed, scale, data):
    if data is None:
        shape = (2, 16, 13, 13)
    elif isinstance(data, tuple):  # an explicit example's shape
        shape = data
    else:
        shape = data.draw(draws.pool_shapes(pool[0], pool[2], max_c=12, max_hw=11))
    x = to_memory_format(make_values(shape, kind, seed, dtype, scale), fmt)
    check_block(path, x, (size, alpha, beta, k), pool, grad_fmt, seed)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_lrn_max_pool2d_tie_decided_by_its_own_lrn_values(path, fmt):
    """The case hypothesis found: integer inputs whose LRN values tie in PyTorch's float32 arithmetic
    but differ by an ulp in the kernel's (exp2/log2 for the power), so the kernel's argmax is another
    element than PyTorch's and 4 of 300 gradient elements had the opposite sign. The block's argmax is
    that of its own relu_lrn values: the saved argmax equals max_pool2d's on kernels.relu_lrn(x) in
    every window whose maximum is not 0, and the gradient follows it."""
    lrn, pool = (4, 1.0, 1.0, 2.0), ((3, 4), (1, 1), (1, 1))
    x = to_memory_format(make_values((2, 5, 5, 6), "ties", 14244396, torch.float32, 10.0), fmt)
    out, _ = check_block(path, x, lrn, pool, seed=14244396)
    kernel, stride, padding = (list(pair(v)) for v in pool)
    with on_path(path):
        y, argmax = custom_op("relu_lrn_max_pool2d")(x, *lrn, kernel, stride, padding)
        own, own_argmax = custom_op("max_pool2d")(kernels.relu_lrn(x, *lrn), kernel, stride, padding)
    assert torch.equal(bits(y), bits(own))
    decided = own != 0  # a window of zeros passes no gradient, whichever element it names
    assert torch.equal(argmax.long()[decided], own_argmax.long()[decided]), "argmax of other values"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float16, marks=pytest.mark.slow),
                                   torch.bfloat16])  # float16: the exhaustive tier (bfloat16 rounds coarser)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_lrn_max_pool2d_exact_ties_go_to_the_first_maximum(path, dtype, fmt):
    """Each pixel's channel column is constant, so equal pixels give bit-equal LRN outputs: exact
    ties in most windows, positive so that the ReLU passes their gradient on. No near ties either
    (values 1, 2, 3): the gradient must also equal PyTorch's."""
    g = torch.Generator().manual_seed(11)
    plane = torch.randint(1, 4, (1, 1, 7, 8), generator=g).float()
    x = to_memory_format(plane.expand(1, 6, 7, 8).to(dtype), fmt)
    # windows per position and axis: 2 (AlexNet's 3/2), 2 and 2, 1 (no overlap), 3
    for pool in [(3, 2, 0), ((3, 2), (2, 1), (1, 0)), (2, 2, 1), (3, 1, 1)]:
        check_block(path, x, (5, 0.3, 0.75, 2.0), pool, seed=2, pytorch_grad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size,fmt", [(2, "contiguous"),
                                      pytest.param(8, "contiguous", marks=pytest.mark.slow),
                                      (9, "contiguous"),
                                      (5, "channels_last")])
def test_relu_lrn_max_pool2d_many_channels(path, size, fmt):
    """70 channels: whole and partial channel chunks, LRN windows that straddle two of them."""
    x = to_memory_format(make_values((1, 70, 5, 6), "normal", size, torch.float32, 3.0), fmt)
    check_block(path, x, (size, 1.0, 0.75, 1.0), (3, 2, 1), seed=size)


# The patch walks (block.py's NCHW forward and backward for windows inside the plane): chunks of
# channels whose last one overlaps its neighbour, the last channels finished without loads, patches
# overlapping at odd plane edges, blocks and windows past them, the last program's surplus threads,
# patches of 2 x 2, 1 x 2 and 1 x 1 outputs. (shape, lrn, pool, values, dtype, backward walk too)
PATCH_CASES = [
    ((3, 23, 9, 12), (5, 1.0, 0.75, 1.0), (3, 2, 0), "normal", torch.float32, True),
    ((1, 61, 11, 11), (5, 0.5, 0.75, 2.0), (3, 2, 0), "ties", torch.float32, True),
    ((1, 110, 7, 9), (5, 1.0, 0.75, 1.0), (3, 2, 0), "normal", torch.float32, True),
    ((1, 47, 9, 7), (5, 0.5, 0.75, 2.0), (3, 2, 0), "special", torch.float32, True),
    ((2, 12, 7, 10), (4, 1.0, 0.6, 1.0), (2, 2, 0), "ties", torch.float32, True),
    ((1, 9, 9, 8), (3, 0.8, 0.75, 1.0), (3, 1, 0), "normal", torch.float32, False),
    ((1, 16, 8, 9), (5, 1.0, 0.75, 1.0), ((3, 2), (2, 1), 0), "ties", torch.bfloat16, True),
    ((2, 8, 3, 7), (6, 1.0, 1.0, 1.0), (3, 2, 0), "normal", torch.float16, False),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", PATCH_CASES, ids=[f"{c[0]}-{c[1][0]}-{c[2]}-{c[3]}" for c in PATCH_CASES])
def test_relu_lrn_max_pool2d_patch_walks(path, case):
    from kernels import block

    shape, lrn, pool, kind, dtype, backward = case
    kernel, stride, padding = (pair(v) for v in pool)
    out_hw = pool_out_size(*shape[2:], kernel, stride, padding)
    # the case reaches the patch walks (it would else test other kernels)
    geometry = (lrn[0], (kernel, stride, padding), *shape[2:], *out_hw, shape[1], dtype)
    assert block._patch_shape(*geometry)
    assert block._patch_bwd_fits(*geometry) == backward
    x = make_values(shape, kind, shape[1], dtype, 3.0)
    check_block(path, x, lrn, pool, seed=shape[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_lrn_max_pool2d_compares_values_rounded_to_the_output_dtype(path, fmt):
    """bfloat16: at (0, 0) a neighbour channel of 1 + 2^-7 makes the float32 LRN value of channel 3
    smaller than at (0, 1), 0.59391 against 0.59460, but both round to 0.59375: a tie of relu_lrn's
    outputs, which the first position wins (comparing unrounded values would pick (0, 1))."""
    x = torch.zeros(1, 7, 3, 3)
    x[0, :, 0, :2] = 1.0
    x[0, 2, 0, 0] = 1.0078125
    x = to_memory_format(x.to(torch.bfloat16), fmt)
    lrn = (5, 1.0, 0.75, 1.0)
    with on_path(path):
        y = kernels.relu_lrn(x, *lrn)[0, 3, 0, :2]
    assert y[0] == y[1], "the case's tie is gone"
    _, grad = check_block(path, x, lrn, (3, 1, 0), seed=5)
    assert grad[0, 3, 0, 0] != 0 and grad[0, 3, 0, 1] == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel", [(17, 16)])
def test_relu_lrn_max_pool2d_large_windows(path, kernel):
    """272 window positions: the argmax outgrows one byte."""
    g = torch.Generator().manual_seed(3)
    plane = torch.randint(1, 4, (1, 1, 18, 33), generator=g).float()
    x = plane.expand(1, 2, 18, 33).contiguous()
    check_block(path, x, (2, 0.3, 0.75, 2.0), (kernel, kernel, 1), seed=3, pytorch_grad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_lrn_max_pool2d_nan_inf(path, dtype):
    """NaN spreads over its LRN window then wins its pooling windows; +inf gives NaN at itself."""
    x = make_values((1, 7, 6, 6), "normal", 8, dtype)
    x[0, 3, 1, 1] = float("nan")
    x[0, 0, 4, 4] = float("inf")
    x[0, 6, 0, 5] = float("-inf")
    out, _ = check_block(path, x, (3, 0.5, 0.75, 2.0), (3, 2, 1))
    assert out[0, 2:5, :2, :2].isnan().all()


# ---------------------------------------------------------------- int32 overflow of channel offsets (GPU)


@pytest.mark.cuda
def test_cuda_channel_offsets_past_2_31():
    """The fused block (3x3 stride 2) on (1, 3, 32768, 32769) in bfloat16 (channel 2 starts at element
    2^31 + 65536): the last pooled rows 16381 and 16382 read input rows 32762-32766; input rows
    32763-32766 get gradient from those rows only (32767 from none); the first rows too."""
    from tests.test_ops_lrn import BIG_SHAPE, need_free_gpu_bytes

    need_free_gpu_bytes(40 * 2**30)
    dtype = torch.bfloat16
    x = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda").mul_(3.0).requires_grad_()
    lrn, pool = (5, 0.5, 0.75, 2.0), (3, 2, 0)
    out_shape = (1, 3, 16383, 16384)
    dy = torch.randn(out_shape, dtype=dtype, device="cuda")
    out = kernels.relu_lrn_max_pool2d(x, *lrn, *pool)
    (dx,) = torch.autograd.grad(out, x, dy)
    out, x = out.detach(), x.detach()
    assert out.shape == out_shape
    xs = x[:, :, 32762:32767]
    own, own_dx = own_composition("triton", xs, lrn, pool, dy[:, :, 16381:16383])
    ref, _ = ref_forward_backward(reference.relu_lrn_max_pool2d, xs, None, *lrn, *pool)
    name = f"relu_lrn_max_pool2d {BIG_SHAPE} last rows"
    assert torch.equal(bits(out[:, :, 16381:16383]), bits(own)), name + ": != max_pool2d(relu_lrn(rows))"
    assert_close_verbose(out[:, :, 16381:16383], ref, TOLERANCES[dtype], name=name)
    assert_close_verbose(dx[:, :, 32763:32767], own_dx[:, :, 1:], grad_tol(dtype, own_dx),
                         name=name + " backward")
    assert (dx[:, :, 32767] == 0).all(), name + ": the last input row is in no window"
    own, own_dx = own_composition("triton", x[:, :, :5], lrn, pool, dy[:, :, :2])
    assert torch.equal(bits(out[:, :, :2]), bits(own)), "first rows"
    assert_close_verbose(dx[:, :, :3], own_dx[:, :, :3], grad_tol(dtype, own_dx), name="first rows backward")
