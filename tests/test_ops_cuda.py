"""The equivalence checks at AlexNet's sizes on a CUDA GPU (batch 128: 96x55x55, 256x27x27, 256x13x13,
and (128, 4096) for dropout), int64 indexing past 2^31 elements, tensors on two devices, opcheck and
torch.compile on CUDA tensors. Skipped without a GPU.

``ALEXNET_CUDA_TESTS_ON=cpu`` runs this file's code on the CPU path at batch 2 (a dry run of the
tests themselves, for machines without a GPU); the int64 and two-device tests stay skipped.

Two builds: the kernels as they run (inline PTX on NVIDIA), and, in a subprocess, the same equivalence
tests with ``ALEXNET_NO_ASM=1`` (every kernel with tl.load / tl.store and Triton's math):
``test_cuda_build_without_inline_asm`` names that build when it fails, so a GPU failure tells the inline
PTX from the algorithm. Every test's name carries the build it ran in (``[ptx]`` or ``[no_asm]``)."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference
from tests._utils import (
    EXACT,
    TOLERANCES,
    ambiguous_windows,
    assert_close_verbose,
    assert_memory_format,
    bits,
    grad_tol,
    make_grad,
    make_values,
    saved_storages,
    to_memory_format,
)

DRY_RUN = os.environ.get("ALEXNET_CUDA_TESTS_ON") == "cpu"
DEVICE = "cpu" if DRY_RUN else "cuda"
BATCH = 2 if DRY_RUN else 128

pytestmark = [] if DRY_RUN else [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_real_gpu = pytest.mark.skipif(DRY_RUN or not torch.cuda.is_available(), reason="needs a CUDA GPU")
BUILD = "no_asm" if kernels._common.NO_ASM else "ptx"  # which build of the kernels this process runs


@pytest.fixture(autouse=True, params=[BUILD])
def build(request):
    """The build, in every test's name: test_x[ptx] or test_x[no_asm]."""
    return request.param

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORMATS = ["contiguous", "channels_last"]
CONV1, CONV2, CONV5 = (96, 55, 55), (256, 27, 27), (256, 13, 13)


def alexnet_inputs(*chws):
    """Parametrizes a test over AlexNet planes (C, H, W) (``chw``), every dtype and both layouts."""
    def parametrize(test):
        for name, values_ in (("fmt", FORMATS), ("dtype", DTYPES), ("chw", list(chws))):
            test = pytest.mark.parametrize(name, values_)(test)
        return test
    return parametrize


@pytest.fixture(autouse=True)
def _path():
    """On the dry run, CPU tensors take the plain-PyTorch path (the interpreter would take hours)."""
    if DRY_RUN:
        with kernels.triton_disabled():
            yield
    else:
        yield
        torch.cuda.empty_cache()


def values(shape, kind, seed, dtype, fmt="contiguous", scale=1.0):
    return to_memory_format(make_values(shape, kind, seed, dtype, scale).to(DEVICE), fmt)


def grad(shape, seed, dtype, fmt="contiguous"):
    return to_memory_format(make_grad(shape, seed, dtype).to(DEVICE), fmt)


def fwd_bwd(fn, x, g, *args):
    xk = x.detach().requires_grad_(g is not None)
    out = fn(xk, *args)
    dx = torch.autograd.grad(out, xk, g)[0] if g is not None else None
    return out.detach(), dx


def ref_fwd_bwd(fn, x, g, *args):
    xr = x.detach().float().requires_grad_(g is not None)
    out = fn(xr, *args)
    dx = torch.autograd.grad(out, xr, g.float())[0].to(x.dtype) if g is not None else None
    return out.detach().to(x.dtype), dx


# ------------------------------------------------------------------------------------------ LRN


@alexnet_inputs(CONV1, CONV2)
def test_cuda_relu_lrn_alexnet_sizes(chw, dtype, fmt):
    shape = (BATCH, *chw)
    x = values(shape, "normal", 1, dtype, fmt, scale=10.0)
    g = grad(shape, 1, dtype)
    for lrn in [(5, 1e-4, 0.75, 2.0), (4, 0.5, 0.75, 1.0)]:
        out, dx = fwd_bwd(kernels.relu_lrn, x, g, *lrn)
        ref, ref_dx = ref_fwd_bwd(reference.relu_lrn, x, g, *lrn)
        name = f"relu_lrn {shape} {dtype} {fmt} {lrn}"
        assert_close_verbose(out, ref, TOLERANCES[dtype], name=name)
        assert_memory_format(out, x, name)
        assert_close_verbose(dx, ref_dx, grad_tol(dtype, ref_dx), name=name + " backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_relu_lrn_nan_inf(dtype):
    x = values((BATCH, *CONV2), "special", 2, dtype)
    out, _ = fwd_bwd(kernels.relu_lrn, x, None)
    ref, _ = ref_fwd_bwd(reference.relu_lrn, x, None)
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=f"relu_lrn nan/inf {dtype}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_relu_lrn_k_zero_subnormal_window_sums(fmt, dtype):
    # k = 0 and tiny activations: s = alpha / size * sum r^2 (~1e-41) is subnormal; rsqrt.approx.ftz
    # would read it as 0 and give inf where PyTorch is finite (issue 19, item 6). Forward only: PyTorch's
    # own backward overflows there (s^-1.75)
    x = values((BATCH, *CONV2), "normal", 11, dtype, fmt, scale=2e-18)
    lrn = (5, 1e-4, 0.75, 0.0)
    ref = reference.relu_lrn(x.float(), *lrn).to(dtype)
    assert (torch.isfinite(ref) & (ref != 0)).float().mean() > 0.3  # finite nonzero outputs to compare
    name = f"k=0 {dtype} {fmt}"
    assert_close_verbose(kernels.relu_lrn(x, *lrn), ref, TOLERANCES[dtype], name="relu_lrn " + name)
    pooled = F.max_pool2d(reference.relu_lrn(x.float(), *lrn), 3, 2).to(dtype)
    assert_close_verbose(kernels.relu_lrn_max_pool2d(x, *lrn, 3, 2, 0), pooled, TOLERANCES[dtype],
                         name="relu_lrn_max_pool2d " + name)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("lrn", [(5, 1e-4, 0.5, 1.0), (5, 1e-3, 1.0, 2.0), (5, 1e-2, 0.6, 0.0),
                                 (3, 1e-2, 2.0, 1.0)])
def test_cuda_relu_lrn_other_betas_and_k_zero(fmt, lrn):
    # the generic power (log2 / exp2) and the other special betas, compiled; k = 0 at normal sums
    shape = (BATCH, *CONV2)
    x = values(shape, "normal", 12, torch.float32, fmt, scale=10.0)
    g = grad(shape, 12, torch.float32)
    name = f"relu_lrn {fmt} {lrn}"
    out, dx = fwd_bwd(kernels.relu_lrn, x, g, *lrn)
    ref, ref_dx = ref_fwd_bwd(reference.relu_lrn, x.double(), g.double(), *lrn)
    finite = torch.isfinite(ref)
    assert_close_verbose(out[finite], ref.float()[finite], TOLERANCES[torch.float32], name=name)
    ok = torch.isfinite(ref_dx)
    ref_dx = ref_dx.float()
    assert_close_verbose(dx[ok], ref_dx[ok], grad_tol(torch.float32, ref_dx[ok]), name=name + " backward")
    pooled = F.max_pool2d(reference.relu_lrn(x.double(), *lrn), 3, 2).float()
    own = kernels.max_pool2d(kernels.relu_lrn(x, *lrn), 3, 2)
    block = kernels.relu_lrn_max_pool2d(x, *lrn, 3, 2, 0)
    assert torch.equal(bits(block), bits(own)), name + ": the block is not max_pool2d(relu_lrn(x)), bitwise"
    assert_close_verbose(block, pooled, TOLERANCES[torch.float32], name=name + " block")


@needs_real_gpu
@pytest.mark.skipif(kernels._common.NO_ASM, reason="this process runs the build without inline asm")
def test_cuda_build_without_inline_asm():
    # the equivalence tests of this file again, every kernel built without inline asm (ALEXNET_NO_ASM=1)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "ALEXNET_NO_ASM": "1", "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o",
                           "addopts=", __file__, "-k", "alexnet_sizes or nan_inf or k_zero or other_betas"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    tail = "\n".join(proc.stdout.splitlines()[-30:])
    assert proc.returncode == 0, f"the build without inline asm (ALEXNET_NO_ASM=1) fails:\n{tail}"


# ------------------------------------------------------------------------------------- max-pool


@alexnet_inputs(CONV1, CONV2, CONV5)
@pytest.mark.parametrize("kind", ["ties", "special"])
def test_cuda_max_pool2d_alexnet_sizes(chw, dtype, fmt, kind):
    shape = (BATCH, *chw)
    x = values(shape, kind, 3, dtype, fmt)
    out0 = F.max_pool2d(x, 3, 2)
    g = grad(out0.shape, 3, dtype)
    out, dx = fwd_bwd(kernels.max_pool2d, x, g, 3, 2, 0)
    ref, ref_dx = ref_fwd_bwd(reference.max_pool2d, x, g, 3, 2, 0)
    name = f"max_pool2d {shape} {dtype} {fmt} {kind}"
    assert_close_verbose(out, ref, EXACT, name=name)
    assert torch.equal(bits(out), bits(ref)), name
    assert_memory_format(out, x, name)
    # 3x3 stride 2: an input is in up to 4 windows; float32 sums of up to 4 terms, rounded once
    tol = TOLERANCES[dtype] if dtype == torch.float32 else grad_tol(dtype, ref_dx)
    assert_close_verbose(dx, ref_dx, tol, name=name + " backward")


# ---------------------------------------------------------------------------------- fused block


@alexnet_inputs(CONV1, CONV2)
def test_cuda_relu_lrn_max_pool2d_alexnet_sizes(chw, dtype, fmt):
    shape = (BATCH, *chw)
    x = values(shape, "normal", 4, dtype, fmt, scale=10.0)
    lrn = (5, 1e-4, 0.75, 2.0)
    name = f"relu_lrn_max_pool2d {shape} {dtype} {fmt}"
    # the contract, exactly: max_pool2d of the op's own relu_lrn values, argmax included (the gradient
    # follows it); compared with the composition of the two ops on the same device, every window
    own_g = grad((BATCH, chw[0], (chw[1] - 3) // 2 + 1, (chw[2] - 3) // 2 + 1), 4, dtype)
    out, dx = fwd_bwd(kernels.relu_lrn_max_pool2d, x, own_g, *lrn, 3, 2, 0)
    own, own_dx = fwd_bwd(lambda t: kernels.max_pool2d(kernels.relu_lrn(t, *lrn), 3, 2, 0), x, own_g)
    assert torch.equal(bits(out), bits(own)), name + ": not max_pool2d(relu_lrn(x)) bit for bit"
    assert_close_verbose(dx, own_dx, grad_tol(dtype, own_dx), name=name + " backward against the composition")
    # against PyTorch: windows whose winner rounding decides (ties of PyTorch's values included: the
    # op's fast 1/sqrt may split them) take no gradient
    ambiguous = ambiguous_windows(reference.relu_lrn(x.float(), *lrn), 3, 2, 0, dtype, ties=True)
    g = own_g.masked_fill(ambiguous, 0.0)
    out, dx = fwd_bwd(kernels.relu_lrn_max_pool2d, x, g, *lrn, 3, 2, 0)
    ref, ref_dx = ref_fwd_bwd(reference.relu_lrn_max_pool2d, x, g, *lrn, 3, 2, 0)
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=name)
    assert_memory_format(out, x, name)
    assert_close_verbose(dx, ref_dx, grad_tol(dtype, ref_dx), name=name + " backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_relu_lrn_max_pool2d_saved_bytes(dtype):
    x = values((BATCH, *CONV2), "normal", 5, dtype).requires_grad_()
    storages, out = saved_storages(kernels.relu_lrn_max_pool2d, x)
    saved = sum(n for n, _, _ in storages.values())
    budget = x.numel() * x.element_size() + out.numel()
    assert saved <= budget, f"saved {saved} > {budget}"


# -------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("op", [kernels.dropout, kernels.relu_dropout])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_cuda_dropout_fc_size(op, dtype, p):
    x = values((BATCH, 4096), "normal", 6, dtype)
    x = torch.where(x == 0, torch.ones_like(x), x)
    g = grad(x.shape, 6, dtype)
    out, dx = fwd_bwd(lambda t: op(t, p, True, 1234), x, g)
    relu = op is kernels.relu_dropout
    xr = F.relu(x) if relu else x
    kept = out != 0
    n = x.numel() if not relu else int((xr != 0).sum())
    mean, sigma = n * (1 - p), math.sqrt(n * p * (1 - p))
    assert abs(int(kept.sum()) - mean) <= 6 * sigma, f"kept {int(kept.sum())} of {n}, p={p}"
    mask = kept | (xr == 0)
    ref = reference.dropout_with_mask(xr.float(), mask, p).to(dtype)
    assert_close_verbose(out, ref, TOLERANCES[dtype], name=f"{op.__name__} p={p} {dtype}")
    ref_dx = reference.dropout_with_mask(g.float(), kept, p).to(dtype)
    assert_close_verbose(dx, ref_dx, TOLERANCES[dtype], name=f"{op.__name__} p={p} {dtype} backward")
    again, _ = fwd_bwd(lambda t: op(t, p, True, 1234), x, None)
    assert torch.equal(again, out), "same seed, different output"
    other, _ = fwd_bwd(lambda t: op(t, p, True, 4321), x, None)
    assert not torch.equal(other != 0, kept), "different seeds, same mask"


def test_cuda_dropout_seed_none_follows_manual_seed():
    x = torch.ones(BATCH, 4096, device=DEVICE)
    torch.manual_seed(5)
    a = kernels.dropout(x)
    b = kernels.dropout(x)
    torch.manual_seed(5)
    assert torch.equal(kernels.dropout(x), a)
    assert not torch.equal(a, b)
    assert torch.initial_seed() == 5


@needs_real_gpu
def test_cuda_dropout_mask_equals_cpu_path_mask():
    """The module documents that the CPU path draws the same Philox stream as the kernel."""
    x = torch.ones(3, 5000)
    with kernels.triton_disabled():
        cpu = kernels.dropout(x, 0.5, True, 99)
    gpu = kernels.dropout(x.cuda(), 0.5, True, 99).cpu()
    assert torch.equal(cpu, gpu)


# ------------------------------------------------------------------- int64 indexing (> 2^31 elements)


def _need_bytes(n):
    free, _ = torch.cuda.mem_get_info()
    if free < n:
        pytest.skip(f"needs {n / 2**30:.1f} GiB free on the GPU, {free / 2**30:.1f} GiB free")


@needs_real_gpu
def test_cuda_dropout_int64_indexing():
    n = 2**31 + 4096 * 3
    _need_bytes(3 * 2 * n + 2**30)
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    y = kernels.dropout(x, 0.5, True, 11)
    head, tail = y[:8192], y[-8192:]
    assert ((tail == 0) | (tail == 2)).all(), "tail past 2^31 not written correctly"
    kept = int((tail != 0).sum())
    assert abs(kept - 4096) <= 6 * math.sqrt(8192 * 0.25), f"tail keep count {kept}"
    wrapped = y[2**31:2**31 + 8192]
    assert not torch.equal(wrapped != 0, head != 0), "the mask repeats after 2^31 elements (int32 offsets)"
    del x, y


@needs_real_gpu
def test_cuda_relu_lrn_and_max_pool2d_int64_indexing():
    shape = (24, 96, 1000, 1000)  # 2.3e9 elements > 2^31, every launch-grid axis within CUDA's limits
    numel = math.prod(shape)
    _need_bytes(3 * 2 * numel + 2**30)
    x = torch.randn(shape, dtype=torch.float16, device="cuda")
    y = kernels.relu_lrn(x, 5, 0.5, 0.75, 2.0)
    sl = (slice(-1, None), slice(None), slice(-4, None), slice(None))  # the last rows: offsets > 2^31
    ref = reference.relu_lrn(x[sl].float(), 5, 0.5, 0.75, 2.0).to(x.dtype)
    assert_close_verbose(y[sl], ref, TOLERANCES[torch.float16], name="relu_lrn past 2^31")
    del y
    p = kernels.max_pool2d(x, 3, 2, 0)  # (24, 96, 499, 499)
    # output rows 495..498 pool input rows 990..998
    ref = F.max_pool2d(x[-1:, :, 990:999, :], 3, 2, 0)
    assert torch.equal(p[-1:, :, -4:, :], ref), "max_pool2d past 2^31"
    del p
    z = kernels.relu_lrn_max_pool2d(x)
    ref = reference.relu_lrn_max_pool2d(x[-1:, :, 990:999, :].float()).to(x.dtype)
    assert_close_verbose(z[-1:, :, -4:, :], ref, TOLERANCES[torch.float16], name="fused block past 2^31")


@needs_real_gpu
@pytest.mark.parametrize("shape,fmt", [((1, 8, 3000, 3000), "contiguous"),
                                       ((1, 8, 1500, 1500), "channels_last"),
                                       ((70000, 2, 3, 3), "contiguous")],
                         ids=["plane-of-9M-pixels", "channels-last-plane-of-2.25M-pixels", "batch-70000"])
def test_cuda_large_planes_and_batches(shape, fmt):
    """Shapes whose natural launch grids (one axis over pixel blocks, one over the batch) pass CUDA's
    limit of 65535 on grid axes y and z: the ops must still run and agree with the reference."""
    x = to_memory_format(torch.randn(shape, dtype=torch.float16, device="cuda"), fmt)
    g = to_memory_format(torch.randn(shape, dtype=torch.float16, device="cuda"), fmt)
    out, dx = fwd_bwd(kernels.relu_lrn, x, g)
    ref, ref_dx = ref_fwd_bwd(reference.relu_lrn, x, g)
    assert_close_verbose(out, ref, TOLERANCES[torch.float16], name=f"relu_lrn {shape}")
    assert_close_verbose(dx, ref_dx, grad_tol(torch.float16, ref_dx), name=f"relu_lrn {shape} backward")
    pooled = kernels.max_pool2d(x, 3, 2, 0)
    assert torch.equal(pooled, F.max_pool2d(x, 3, 2, 0)), f"max_pool2d {shape}"
    fused = kernels.relu_lrn_max_pool2d(x)
    ref = reference.relu_lrn_max_pool2d(x.float()).to(x.dtype)
    assert_close_verbose(fused, ref, TOLERANCES[torch.float16], name=f"relu_lrn_max_pool2d {shape}")


# ---------------------------------------------------------------------------------- two devices


@needs_real_gpu
@pytest.mark.parametrize("name", ["dropout", "relu_dropout"])
def test_cuda_rejects_tensors_on_two_devices(name):
    op = getattr(torch.ops.alexnet_triton, name).default
    x = torch.ones(10, device="cuda")
    with pytest.raises((RuntimeError, ValueError), match=name):
        op(x, torch.tensor([1], dtype=torch.int64), 0.5)


@needs_real_gpu
def test_cuda_backward_rejects_grad_on_another_device():
    ops = torch.ops.alexnet_triton
    x = torch.randn(1, 4, 5, 5, device="cuda")
    if hasattr(ops, "relu_lrn_backward"):
        with pytest.raises((RuntimeError, ValueError), match="relu_lrn"):
            ops.relu_lrn_backward(torch.ones(1, 4, 5, 5), x, 5, 1e-4, 0.75, 2.0)


# ----------------------------------------------------------------------------- opcheck / compile


@needs_real_gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_opcheck(fmt):
    ops = torch.ops.alexnet_triton
    x = values((2, 8, 9, 9), "normal", 7, torch.float32, fmt).requires_grad_()
    seed = torch.tensor([3], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(ops.relu_lrn.default, (x, 5, 1e-4, 0.75, 2.0))
    torch.library.opcheck(ops.max_pool2d.default, (x, [3, 3], [2, 2], [0, 0]))
    torch.library.opcheck(ops.relu_lrn_max_pool2d.default, (x, 5, 1e-4, 0.75, 2.0, [3, 3], [2, 2], [0, 0]))
    torch.library.opcheck(ops.dropout.default, (x, seed, 0.5))
    torch.library.opcheck(ops.relu_dropout.default, (x, seed, 0.5))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cuda_compile_fullgraph(backend):
    torch._dynamo.reset()

    def block(x):
        y = kernels.relu_lrn_max_pool2d(x)  # (N, 96, 27, 27)
        y = kernels.max_pool2d(kernels.relu_lrn(y), 3, 2)  # (N, 96, 13, 13)
        return kernels.dropout(kernels.relu_dropout(y.flatten(1), 0.5, True, 1), 0.5, True, 2)

    x = values((8, *CONV1), "normal", 8, torch.float32, scale=10.0)
    results = []
    for fn in [block, torch.compile(block, backend=backend, fullgraph=True)]:
        out, dx = fwd_bwd(fn, x, grad((8, 96 * 13 * 13), 8, torch.float32))
        results.append((out, dx))
    (out, dx), (cout, cdx) = results
    assert_close_verbose(cout, out, TOLERANCES[torch.float32], name=f"compiled {backend}")
    assert_close_verbose(cdx, dx, grad_tol(torch.float32, dx), name=f"compiled {backend} backward")
