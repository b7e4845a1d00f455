"""kernels.relu_lrn == F.local_response_norm(F.relu(x), size, alpha, beta, k): forward, backward,
NaN / inf, dtypes, memory formats, window edges, the channel walks and tiles, offsets past 2^31 on a GPU.
(What every op keeps, gradcheck, opcheck, bad and empty input among it: tests/test_op_contracts.py.)"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import kernels
from kernels import reference
from tests import _utils as draws
from tests._utils import (
    PATHS,
    TOLERANCES,
    assert_close_verbose,
    assert_memory_format,
    grad_tol,
    make_grad,
    make_values,
    on_path,
    op_forward_backward,
    ref_forward_backward,
    to_memory_format,
)


def check_relu_lrn(path, shape, dtype, fmt, grad_fmt, kind, seed, size, alpha, beta, k, scale=1.0):
    x = to_memory_format(make_values(shape, kind, seed, dtype, scale), fmt)
    finite = bool(torch.isfinite(x).all())
    grad_out_fn = None
    if finite:
        def grad_out_fn(out):
            return to_memory_format(make_grad(out.shape, seed, dtype), grad_fmt)
    with on_path(path):
        out, grad, g = op_forward_backward(kernels.relu_lrn, x, grad_out_fn, size, alpha, beta, k)
    ref, ref_grad = ref_forward_backward(reference.relu_lrn, x, g, size, alpha, beta, k)
    name = f"relu_lrn {path} {tuple(shape)} {dtype} {fmt} {kind} size={size} alpha={alpha} beta={beta} k={k}"
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=name + " forward")
    assert_memory_format(out, x, name)
    if finite:
        assert_close_verbose(grad, ref_grad, grad_tol(dtype, ref_grad), name=name + " backward")


@pytest.mark.parametrize("path", PATHS)
@draws.examples(20)
@given(shape=draws.nchw_shapes(), dtype=draws.dtypes, fmt=draws.memory_formats, grad_fmt=draws.memory_formats,
       kind=draws.value_kinds, seed=draws.seeds, size=draws.lrn_sizes, alpha=draws.lrn_alphas,
       beta=draws.lrn_betas, k=draws.lrn_ks, scale=st.sampled_from([1.0, 10.0]))
# the paper's conv1 / conv2 blocks at toy sizes, and C < size
@example(shape=(2, 24, 7, 7), dtype=torch.float32, fmt="contiguous", grad_fmt="contiguous", kind="normal",
         seed=0, size=5, alpha=1e-4, beta=0.75, k=2.0, scale=10.0)
@example(shape=(1, 3, 5, 4), dtype=torch.float16, fmt="channels_last", grad_fmt="contiguous",
         kind="normal", seed=1, size=6, alpha=1.0, beta=0.75, k=2.0, scale=1.0)
def test_relu_lrn_matches_reference(path, shape, dtype, fmt, grad_fmt, kind, seed, size, alpha, beta, k,
                                    scale):
    check_relu_lrn(path, shape, dtype, fmt, grad_fmt, kind, seed, size, alpha, beta, k, scale)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 9])
@pytest.mark.parametrize("channels", [1, 3, 7])
def test_relu_lrn_window_edges(path, size, channels):
    """Every size against few channels (window wider than C, asymmetric even windows), large alpha
    so that a wrong window changes the result well beyond rounding."""
    check_relu_lrn(path, (1, channels, 3, 2), torch.float32, "contiguous", "contiguous", "normal",
                   seed=size * 10 + channels, size=size, alpha=1.0, beta=0.75, k=1.0, scale=2.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size,fmt", [(2, "contiguous"), (5, "contiguous"), (8, "contiguous"),
                                      (9, "contiguous"), (4, "channels_last"), (9, "channels_last")])
def test_relu_lrn_many_channels(path, size, fmt):
    """70 channels: kernels that tile or walk the channels in chunks (of 8, 32, ...) see whole and
    partial chunks and windows that straddle two of them."""
    check_relu_lrn(path, (1, 70, 3, 5), torch.float32, fmt, "contiguous", "normal", seed=size,
                   size=size, alpha=1.0, beta=0.75, k=1.0, scale=2.0)
    check_relu_lrn(path, (1, 70, 3, 5), torch.bfloat16, fmt, fmt, "normal", seed=size + 1,
                   size=size, alpha=0.1, beta=0.75, k=2.0, scale=5.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_relu_lrn_nan_inf_propagate_across_the_window(path, dtype):
    """NaN in one channel makes its whole window NaN; +inf gives NaN at itself, 0 beside it; -inf
    and NaN go through the ReLU as 0 and NaN."""
    x = torch.ones(1, 9, 2, 2, dtype=dtype)
    x[0, 2, 0, 0] = float("nan")
    x[0, 6, 0, 1] = float("inf")
    x[0, 4, 1, 0] = float("-inf")
    x[0, 0, 1, 1] = -0.0
    with on_path(path):
        out = kernels.relu_lrn(x, 3, 0.5, 0.75, 2.0)
    ref, _ = ref_forward_backward(reference.relu_lrn, x, None, 3, 0.5, 0.75, 2.0)
    assert out[0, 1:4, 0, 0].isnan().all(), out[0, :, 0, 0]
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=f"relu_lrn nan/inf {dtype}")


@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.skipif(not kernels.INTERPRET, reason="the kernels, interpreted")),
    pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_lrn_k_zero_backward_with_subnormal_window_sums(device, fmt):
    """k = 0 and activations ~1e-17: s ~ 6e-39 lies below float32's normal range, where the kernels scale
    it around their flush-to-zero approximations (TINY) in the backward too (s^-1 as well as s^-beta);
    gradients of ~1e-30 keep every product inside float32. Compared with float64 autograd (PyTorch's own
    float32 backward gives NaN here: the kernels are held to the float64 result)."""
    g = torch.Generator().manual_seed(3)
    x = 8e-18 * (1 + 0.2 * torch.rand(2, 8, 7, 9, generator=g))
    dy = 1e-30 * torch.randn(2, 8, 7, 9, generator=g)
    xk = to_memory_format(x, fmt).to(device).requires_grad_()
    (dx,) = torch.autograd.grad(kernels.relu_lrn(xk, 5, 1e-4, 0.75, 0.0), xk, dy.to(device))
    x64 = x.double().requires_grad_()
    (want,) = torch.autograd.grad(reference.relu_lrn(x64, 5, 1e-4, 0.75, 0.0), x64, dy.double())
    assert torch.isfinite(dx).all(), f"{device} {fmt}: non-finite gradient"
    err = float((dx.cpu().double() - want).abs().max() / want.abs().max())
    assert err < 1e-5, f"{device} {fmt}: max error {err:.3g} of max |dx| (float32 gives ~2e-7)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter only: compiled kernels may contract "
                    "multiply-adds differently")
@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 0.3), (3, 1.0)])
def test_relu_lrn_nchw_walk_and_channels_last_tile_agree_bit_for_bit(size, beta):
    # The NCHW and the channels_last walks sum the window's squares and the backward's t in the same
    # channel order with the same expressions, so their results are equal bit for bit; the fused block
    # relies on that order too (its argmax at a tie).
    x = torch.randn(2, 11, 5, 7, generator=torch.Generator().manual_seed(size)) * 3.0
    g = torch.randn(2, 11, 5, 7, generator=torch.Generator().manual_seed(size + 1))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt).requires_grad_()
        y = kernels.relu_lrn(xf, size, 0.5, beta, 1.0)
        (dx,) = torch.autograd.grad(y, xf, g.contiguous(memory_format=fmt))
        results.append((y.detach().contiguous(), dx.contiguous()))
    (y_nchw, dx_nchw), (y_cl, dx_cl) = results
    assert torch.equal(y_nchw, y_cl), (y_nchw - y_cl).abs().max()
    assert torch.equal(dx_nchw, dx_cl), (dx_nchw - dx_cl).abs().max()


# ------------------------------------------------------------------ channels_last: the channel walks


def _channels_last_at(x, offset):
    """x as a channels_last tensor whose data starts ``offset`` elements into its storage (a view that
    defeats vector access)."""
    n, c, h, w = x.shape
    buf = torch.zeros(offset + x.numel(), dtype=x.dtype)
    v = buf[offset:].view(n, h, w, c).permute(0, 3, 1, 2)
    v.copy_(x)
    return v


# (shape, dtype, size, storage offset, chunks: split the channels (else one program walks all C when it
# can), expected VEC, expected WHOLE (static channel edges) of the forward and the backward)
CL_WALKS = [
    ((2, 24, 3, 3), torch.float32, 5, 0, False, 4, (True, True)),  # 128-bit loads, main loop and remainder
    ((2, 40, 2, 3), torch.bfloat16, 5, 0, False, 8, (True, True)),
    ((1, 40, 2, 3), torch.bfloat16, 5, 0, True, 8, (False, False)),  # chunks of 16: halos from neighbours
    ((1, 70, 2, 2), torch.float32, 5, 0, True, 2, (False, False)),  # C not a multiple of 4: 64-bit loads
    ((2, 18, 2, 3), torch.float16, 4, 0, False, 2, (True, True)),  # even window
    ((1, 7, 3, 2), torch.float32, 5, 0, False, 1, (True, True)),  # odd C: one channel per load
    ((1, 3, 3, 2), torch.float32, 5, 0, False, 1, (True, False)),  # C < SIZE
    ((1, 8, 3, 2), torch.bfloat16, 9, 0, False, 8, (False, False)),  # C < SIZE with 8 channels a load
    ((1, 48, 2, 2), torch.bfloat16, 16, 0, False, 8, (True, True)),  # the widest window the walks take
    ((1, 16, 2, 3), torch.float32, 1, 0, False, 4, (True, True)),
    ((2, 24, 2, 3), torch.float32, 5, 1, False, 1, (True, True)),  # misaligned views: narrower loads
    ((2, 24, 2, 3), torch.bfloat16, 5, 2, False, 2, (True, True)),
]


@pytest.mark.parametrize("shape,dtype,size,offset,chunks,vec,whole", CL_WALKS)
def test_relu_lrn_channels_last_walk(monkeypatch, shape, dtype, size, offset, chunks, vec, whole):
    """The channels_last walks (vector loads of a pixel's channels, static or masked channel edges,
    chunks) against PyTorch and bit for bit against the NCHW walks, with NaN and inf in x."""
    from kernels import lrn
    launches = []
    real = lrn.launch

    def spy(name, fn, grid, args, cfg, device, **kw):
        launches.append((fn, {**cfg.constexprs, **kw}))
        return real(name, fn, grid, args, cfg, device, **kw)

    monkeypatch.setattr(lrn, "launch", spy)
    monkeypatch.setattr(lrn, "_CL_THREADS", 2**30 if chunks else 1)  # chunks of at least 16 channels
    x = make_values(shape, "normal", size, dtype, 3.0)
    x[0, 1, 0, 0] = float("nan")
    x[0, -1, -1, -1] = float("inf")
    x[-1, shape[1] // 2, 0, 1] = float("-inf")
    g = make_grad(shape, size + 1, dtype)
    args = (size, 0.5, 0.75, 1.0)
    results = []
    for fmt in ("contiguous", "channels_last"):
        if fmt == "contiguous":
            xf, gf = x.clone(), g.clone()
        else:
            xf, gf = _channels_last_at(x, offset), _channels_last_at(g, offset)
        xf.requires_grad_()
        y = kernels.relu_lrn(xf, *args)
        (dx,) = torch.autograd.grad(y, xf, gf)
        results.append((y.detach().contiguous(), dx.contiguous()))
    (fwd, fwd_args), (bwd, bwd_args) = launches[-2:]
    assert fwd is lrn._relu_lrn_cl_fwd_kernel and bwd is lrn._relu_lrn_cl_bwd_kernel, launches
    assert (fwd_args["VEC"], bwd_args["VEC"]) == (vec, vec), (fwd_args, bwd_args)
    assert (fwd_args["WHOLE"], bwd_args["WHOLE"]) == whole, (fwd_args, bwd_args)
    (y_nchw, dx_nchw), (y_cl, dx_cl) = results
    torch.testing.assert_close(y_cl, y_nchw, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(dx_cl, dx_nchw, rtol=0, atol=0, equal_nan=True)
    ref, _ = ref_forward_backward(reference.relu_lrn, x, None, *args)
    assert_close_verbose(y_cl, ref, TOLERANCES[dtype], name=f"relu_lrn channels_last walk {shape} {dtype}")
    finite = torch.isfinite(x)
    xr = torch.where(finite, x, torch.zeros_like(x))
    _, ref_grad = ref_forward_backward(reference.relu_lrn, xr, g, *args)
    xr_cl = _channels_last_at(xr, offset).requires_grad_()
    (dx_r,) = torch.autograd.grad(kernels.relu_lrn(xr_cl, *args), xr_cl, _channels_last_at(g, offset))
    assert_close_verbose(dx_r, ref_grad, grad_tol(dtype, ref_grad), name=f"relu_lrn channels_last walk grad "
                         f"{shape} {dtype}")


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_relu_lrn_window_wider_than_the_walks_takes_tiles(monkeypatch, fmt):
    """SIZE > WALK_MAX_SIZE: the tile kernels, in both layouts, against PyTorch."""
    from kernels import lrn
    kernels_run = []
    real = lrn.launch
    monkeypatch.setattr(lrn, "launch", lambda name, fn, *a, **kw: (kernels_run.append(fn), real(name, fn, *a,
                                                                                                 **kw)))
    size = lrn.WALK_MAX_SIZE + 1
    check_relu_lrn("triton", (1, 20, 2, 3), torch.float32, fmt, fmt, "normal", seed=3, size=size, alpha=1.0,
                   beta=0.75, k=1.0, scale=2.0)
    assert kernels_run == [lrn._relu_lrn_fwd_kernel, lrn._relu_lrn_bwd_kernel], kernels_run


# ---------------------------------------------------------------- int32 overflow of channel offsets (GPU)
#
# No full-size run on the CPU: C*H*W > 2^31 per image is > 4.3 GB per bfloat16 tensor, hours in the
# interpreter.

BIG_SHAPE = (1, 3, 32768, 32769)  # C*H*W = 3.2e9 > 2^31; s_c = H*W = 1.07e9 fits int32, 2 * s_c does not


def need_free_gpu_bytes(n):
    free, _ = torch.cuda.mem_get_info()
    if free < n:
        pytest.skip(f"needs {n / 2**30:.0f} GiB free on the GPU, {free / 2**30:.1f} GiB free")


@pytest.mark.cuda
def test_cuda_channel_offsets_past_2_31():
    """Channel 2 starts at element 2 * 32768 * 32769 = 2^31 + 65536: an int32 ``i * s_c`` wraps there.
    The LRN window spans only channels, so the reference of a few rows is computed on those rows."""
    need_free_gpu_bytes(40 * 2**30)
    dtype = torch.bfloat16
    x = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda").mul_(3.0).requires_grad_()
    dy = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda")
    lrn = (5, 0.5, 0.75, 2.0)
    out = kernels.relu_lrn(x, *lrn)
    (dx,) = torch.autograd.grad(out, x, dy)
    for rows in (slice(0, 2), slice(16384, 16386), slice(-2, None)):  # all 3 channels of each row
        sl = (slice(None), slice(None), rows, slice(None))
        ref, ref_dx = ref_forward_backward(reference.relu_lrn, x.detach()[sl], dy[sl], *lrn)
        name = f"relu_lrn {BIG_SHAPE} rows {rows}"
        assert_close_verbose(out.detach()[sl], ref, TOLERANCES[dtype], name=name)
        assert_close_verbose(dx[sl], ref_dx, grad_tol(dtype, ref_dx), name=name + " backward")
