"""Four latent bugs, one group of tests each, written to fail before the fix:

a. size-1 dimensions with arbitrary strides: ``torch.randn(1, 4, 1, 6).transpose(2, 3)`` is contiguous
   to PyTorch, yet a launcher that passes ``x.stride(3)`` as the stride of the flattened H*W axis reads
   (and writes) the wrong elements. The inputs here are views into a larger buffer whose tail holds a
   sentinel, so a wrong address shows up as a wrong value; every launch runs on padded copies of its
   tensors' storages (``padded_launches``), so a wrong write is reported instead of corrupting the heap.
b. device guard: a tensor on cuda:1 while cuda:0 is current must be launched under cuda:1.
c. an integer dropout seed must reach the kernel as an integer, not as a tensor copied host-to-device
   on every call (such a copy cannot be captured in a CUDA graph).
d. int32 overflow of channel offsets (``i * s_c`` in the channel-walking LRN backward) once C*H*W of
   one image reaches 2^31: a CUDA test at (1, 3, 32768, 32769) in bfloat16.

Without a GPU the CUDA-marked tests are skipped; the others run on the Triton path under the
interpreter (CPU tensors), or record launches instead of running them (``kernels._common.recording``).
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import _common, reference
from tests._utils import (
    EXACT,
    TOLERANCES,
    assert_close_verbose,
    bits,
    grad_tol,
    make_grad,
    make_values,
    ref_forward_backward,
)
from tests.test_ops_block import own_composition
from tests.test_ops_maxpool import pool_grad_tol

CL = torch.channels_last

# ================================================================================================
# a. size-1 dimensions with arbitrary strides
# ================================================================================================

SENTINEL = 1e6  # float32 only: a wrongly addressed read brings in 1e6 (its square 1e12 in an LRN window)


def strided_view(values: torch.Tensor, strides) -> torch.Tensor:
    """``values`` copied into ``buffer.as_strided(values.shape, strides)``, a buffer whose elements past
    the view (room for reads made with wrong strides) hold SENTINEL."""
    shape = tuple(values.shape)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    buf = torch.full((span + values.numel() * max(strides) + 64,), SENTINEL, dtype=values.dtype)
    view = buf.as_strided(shape, strides)
    view.copy_(values)
    return view


def layout_of(t: torch.Tensor) -> str:
    """"contiguous", "channels_last" or "both" (size-1 dimensions make some tensors both), as PyTorch
    sees the tensor."""
    c, cl = t.is_contiguous(), t.is_contiguous(memory_format=CL)
    assert c or cl, f"test setup: strides {t.stride()} are neither layout"
    return "both" if c and cl else ("contiguous" if c else "channels_last")


def odd_strides(shape, channels_last: bool) -> tuple[int, ...]:
    """Dense strides of ``shape`` in the layout, with every size-1 dimension's stride replaced by an odd
    number that no formula would give."""
    canonical = torch.empty(shape, memory_format=CL if channels_last else torch.contiguous_format).stride()
    odd = iter([7, 11, 13, 17])
    return tuple(next(odd) if n == 1 else s for n, s in zip(shape, canonical))


def assert_well_formed(t: torch.Tensor, like: torch.Tensor, name: str) -> None:
    """``t`` dense in ``like``'s layout (either one where ``like`` is both), every element inside its
    storage."""
    layout = layout_of(like)
    ok = {"contiguous": t.is_contiguous(), "channels_last": t.is_contiguous(memory_format=CL),
          "both": t.is_contiguous() or t.is_contiguous(memory_format=CL)}[layout]
    assert ok, f"[{name}] {layout} input {like.stride()}: output strides {t.stride()}"
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    assert t.storage_offset() + span <= t.untyped_storage().nbytes() // t.element_size(), \
        f"[{name}] strides {t.stride()} reach past the storage"


def assert_launches_clean(name: str, outside, x: torch.Tensor, out: torch.Tensor, dx: torch.Tensor) -> None:
    """No launch wrote outside its tensors (``run_op_padded``), and the output and the input gradient are
    well formed in x's layout."""
    assert not outside, f"[{name}] launches wrote outside their tensors: {outside}"
    assert_well_formed(out, x, name + " output")
    assert_well_formed(dx, x, name + " input gradient")


# (id, shape, strides of the input view, pooling (kernel, stride, padding) that fits the shape)
W1_POOL = ((3, 1), (2, 1), (1, 0))
H1_POOL = ((1, 3), (1, 2), (0, 1))
ODD_CASES = [
    ("transposed-1x6", (1, 4, 6, 1), (24, 6, 1, 6), W1_POOL),  # torch.randn(1, 4, 1, 6).transpose(2, 3)
    ("nchw-w1", (2, 5, 6, 1), (30, 6, 1, 7), W1_POOL),
    ("nchw-h1", (2, 5, 1, 6), (30, 6, 11, 1), H1_POOL),
    ("nchw-n1", (1, 5, 4, 6), (1000, 24, 6, 1), (3, 2, 1)),
    ("c1", (2, 1, 5, 6), (30, 7, 6, 1), (3, 2, 1)),  # also channels_last
    ("channels-last-w1", (2, 5, 6, 1), (30, 1, 5, 11), W1_POOL),
    ("channels-last-h1", (2, 5, 1, 6), (30, 1, 13, 5), H1_POOL),
    ("channels-last-c1", (2, 1, 5, 6), (30, 1, 6, 1), (3, 2, 1)),  # .contiguous(memory_format=CL) of C=1
    ("hw1", (2, 5, 1, 1), (5, 1, 3, 7), (2, 2, 1)),
    ("channels-last-hw1", (2, 5, 1, 1), (5, 1, 5, 5), (2, 2, 1)),  # .contiguous(memory_format=CL) of 1x1
]
ODD_PARAMS = [pytest.param(shape, strides, pool, id=name) for name, shape, strides, pool in ODD_CASES]
# LRN sizes: the channel-walking kernels (small windows) and the tile kernels (windows past
# WALK_MAX_SIZE = 16 channels, SEQ_MAX_SIZE = 8 before); the fused block takes the second only for H x 1
# planes (the interpreter runs a 17-channel window slowly).
LRN_SIZES = [3, 17]
BLOCK_PARAMS = [pytest.param(shape, strides, pool, size, id=f"{name}-{size}")
                for size in LRN_SIZES for name, shape, strides, pool in ODD_CASES
                if size == LRN_SIZES[0] or (shape[3] == 1 and shape[2] > 1)]
LRN = (0.5, 0.75, 2.0)  # alpha, beta, k


def odd_inputs(shape, strides, out_shape, seed):
    """(x as a strided view, the same values contiguous, grad_output as a view with odd size-1 strides
    in x's layout, the same grad contiguous)."""
    values = make_values(shape, "normal", seed, torch.float32, 3.0)
    x = strided_view(values, strides)
    assert torch.equal(x, values)
    layout_of(x)
    g = make_grad(out_shape, seed, torch.float32)
    dy = strided_view(g, odd_strides(out_shape, layout_of(x) == "channels_last"))
    return x, values, dy, g


def run_op(fn, x, dy, *args):
    """Forward and backward (Triton on CUDA tensors, the Triton path on CPU ones)."""
    xk = x.detach().requires_grad_()
    out = fn(xk, *args)
    (dx,) = torch.autograd.grad(out, xk, dy)
    return out.detach(), dx


PAD = 1 << 16  # elements of sentinel on either side of every storage a padded launch touches


def _fill_value(dtype: torch.dtype):
    return SENTINEL if dtype.is_floating_point else 0x5A


@contextlib.contextmanager
def padded_launches():
    """Run every kernel launch inside the block (CPU tensors, Triton's interpreter) on copies of its
    tensors' storages with PAD sentinel elements on either side, then copy the storages back.

    A launch computed with wrong strides may address elements outside its tensors: in place, such a
    write corrupts the heap (the interpreter checks no bounds; the process aborts) and such a read
    takes whatever lies there. Here a read outside a storage gets the sentinel and a write outside one
    lands in the padding; the yielded list names each launch that wrote there. Aliasing is kept: one
    copy per storage."""
    outside = []

    def run(launch):
        copies = {}  # storage data_ptr -> (the storage as a flat tensor, its padded copy)
        args = []
        for a in launch.args:
            if not isinstance(a, torch.Tensor):
                args.append(a)
                continue
            storage = a.untyped_storage()
            if storage.data_ptr() not in copies:
                n = storage.nbytes() // a.element_size()
                flat = torch.empty(0, dtype=a.dtype).set_(storage, 0, (n,), (1,))
                padded = torch.full((n + 2 * PAD,), _fill_value(a.dtype), dtype=a.dtype)
                padded[PAD:PAD + n] = flat
                copies[storage.data_ptr()] = (flat, padded)
            _, padded = copies[storage.data_ptr()]
            args.append(padded.as_strided(a.shape, a.stride(), PAD + a.storage_offset()))
        launch.fn[launch.grid](*args, **launch.constexprs, num_warps=launch.num_warps)
        for flat, padded in copies.values():
            n = flat.numel()
            flat.copy_(padded[PAD:PAD + n])
            fill = torch.full((PAD,), _fill_value(flat.dtype), dtype=flat.dtype)
            if not (torch.equal(padded[:PAD], fill) and torch.equal(padded[PAD + n:], fill)):
                outside.append(launch.name)

    with _common.recording(run):
        yield outside


def run_op_padded(fn, x, dy, *args):
    """``run_op`` with every launch padded: (output, input gradient, launches that wrote outside their
    tensors' storages)."""
    with padded_launches() as outside:
        out, dx = run_op(fn, x, dy, *args)
    return out, dx, outside


@pytest.mark.parametrize("size", LRN_SIZES)
@pytest.mark.parametrize("shape,strides,pool", ODD_PARAMS)
def test_size1_strides_relu_lrn(shape, strides, pool, size):
    x, clean, dy, g = odd_inputs(shape, strides, shape, seed=1)
    out, dx, outside = run_op_padded(kernels.relu_lrn, x, dy, size, *LRN)
    ref, ref_dx = ref_forward_backward(reference.relu_lrn, clean, g, size, *LRN)
    name = f"relu_lrn size={size} {shape} strides {strides}"
    assert_launches_clean(name, outside, x, out, dx)
    assert_close_verbose(out, ref, TOLERANCES[torch.float32], name=name + " forward")
    assert_close_verbose(dx, ref_dx, grad_tol(torch.float32, ref_dx), name=name + " backward")


@pytest.mark.parametrize("shape,strides,pool", ODD_PARAMS)
def test_size1_strides_max_pool2d(shape, strides, pool):
    out_shape = reference.max_pool2d(torch.empty(shape), *pool).shape
    x, clean, dy, g = odd_inputs(shape, strides, out_shape, seed=2)
    out, dx, outside = run_op_padded(kernels.max_pool2d, x, dy, *pool)
    ref, ref_dx = ref_forward_backward(reference.max_pool2d, clean, g, *pool)
    name = f"max_pool2d {shape} strides {strides} pool {pool}"
    assert_launches_clean(name, outside, x, out, dx)
    assert_close_verbose(out, ref, EXACT, name=name + " forward")
    assert_close_verbose(dx, ref_dx, pool_grad_tol(torch.float32, pool[0], pool[1], g),
                         name=name + " backward")


@pytest.mark.parametrize("shape,strides,pool,size", BLOCK_PARAMS)
def test_size1_strides_relu_lrn_max_pool2d(shape, strides, pool, size):
    """Against the block's definition, max_pool2d of its own relu_lrn (tests/test_ops_block.py), run on
    the contiguous copy; and the forward against PyTorch."""
    out_shape = reference.max_pool2d(torch.empty(shape), *pool).shape
    x, clean, dy, g = odd_inputs(shape, strides, out_shape, seed=3)
    lrn = (size, *LRN)
    out, dx, outside = run_op_padded(kernels.relu_lrn_max_pool2d, x, dy, *lrn, *pool)
    own, own_dx = own_composition("triton", clean, lrn, pool, g)
    ref, _ = ref_forward_backward(reference.relu_lrn_max_pool2d, clean, None, *lrn, *pool)
    name = f"relu_lrn_max_pool2d size={size} {shape} strides {strides} pool {pool}"
    assert_launches_clean(name, outside, x, out, dx)
    assert torch.equal(bits(out), bits(own)), name + ": forward != max_pool2d(relu_lrn(contiguous copy))"
    assert_close_verbose(out, ref, TOLERANCES[torch.float32], name=name + " forward")
    assert_close_verbose(dx, own_dx, grad_tol(torch.float32, own_dx), name=name + " backward")


@pytest.mark.parametrize("shape,strides,pool", ODD_PARAMS)
def test_size1_strides_relu_max_pool2d(shape, strides, pool):
    out_shape = reference.max_pool2d(torch.empty(shape), *pool).shape
    x, clean, dy, g = odd_inputs(shape, strides, out_shape, seed=4)
    out, dx, outside = run_op_padded(kernels.relu_max_pool2d, x, dy, *pool)
    ref, ref_dx = ref_forward_backward(lambda t, *a: F.max_pool2d(F.relu(t), *a), clean, g, *pool)
    name = f"relu_max_pool2d {shape} strides {strides} pool {pool}"
    assert_launches_clean(name, outside, x, out, dx)
    assert_close_verbose(out, ref, EXACT, name=name + " forward")
    assert_close_verbose(dx, ref_dx, pool_grad_tol(torch.float32, pool[0], pool[1], g),
                         name=name + " backward")


def test_size1_strides_grad_output_only():
    """An ordinary input, and a grad_output that is a transposed view (contiguous, odd stride on its
    size-1 axis): each backward reads it with its own strides."""
    x = make_values((2, 6, 5, 1), "normal", 5, torch.float32, 3.0)
    g = make_grad((2, 6, 1, 5), 5, torch.float32)
    dy = strided_view(g, (30, 5, 5, 1)).transpose(2, 3)  # (2, 6, 5, 1), strides (30, 5, 1, 5)
    assert dy.is_contiguous() and dy.stride(3) == 5
    gc = dy.contiguous().clone()
    for size in LRN_SIZES:
        _, dx, outside = run_op_padded(kernels.relu_lrn, x, dy, size, *LRN)
        assert not outside, f"relu_lrn size={size}: launches wrote outside their tensors: {outside}"
        _, ref_dx = ref_forward_backward(reference.relu_lrn, x, gc, size, *LRN)
        assert_close_verbose(dx, ref_dx, grad_tol(torch.float32, ref_dx),
                             name=f"relu_lrn size={size} dy view")


# ================================================================================================
# b. device guard
# ================================================================================================


class FakeCudaDevice:
    """Stands in for ``torch.cuda.device``: records which device index is current (0 to start with)."""

    def __init__(self):
        self.current = [0]
        self.entered = []

    def __call__(self, device):
        if isinstance(device, torch.device):
            index = device.index
        elif isinstance(device, str):
            index = torch.device(device).index
        else:
            index = int(device)

        @contextlib.contextmanager
        def guard():
            self.entered.append(index)
            self.current.append(index)
            try:
                yield
            finally:
                self.current.pop()

        return guard()


class FakeKernel:
    """A @triton.jit stand-in: ``fn[grid](*args, **kwargs)`` records the call and the current device."""

    def __init__(self, devices: FakeCudaDevice):
        self.devices = devices
        self.calls = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append(dict(grid=grid, args=args, kwargs=kwargs, device=self.devices.current[-1]))

        return run


def test_launch_runs_under_the_tensors_device(monkeypatch):
    devices = FakeCudaDevice()
    monkeypatch.setattr(torch.cuda, "device", devices)
    fn = FakeKernel(devices)
    cfg = _common.Config(dict(BLOCK=64), num_warps=2)
    _common.launch("fake", fn, (3,), (1, 2.5), cfg, torch.device("cuda", 1), (4,), EXTRA=True)
    assert fn.calls == [dict(grid=(3,), args=(1, 2.5), kwargs=dict(BLOCK=64, EXTRA=True, num_warps=2),
                             device=1)], f"launched as {fn.calls} (devices entered: {devices.entered})"
    assert devices.current == [0], "the guard must be left after the launch"


def test_recorded_launch_is_handed_over_under_the_tensors_device(monkeypatch):
    devices = FakeCudaDevice()
    monkeypatch.setattr(torch.cuda, "device", devices)
    seen = []
    with _common.recording(lambda launch: seen.append((launch.device, devices.current[-1]))):
        _common.launch("fake", FakeKernel(devices), (1,), (), _common.Config({}), torch.device("cuda", 1))
    assert seen == [(torch.device("cuda", 1), 1)]


OP_CALLS = {  # each op at a (2, C, 13, 13)-friendly setting, looked up at call time
    "relu_lrn": lambda t: kernels.relu_lrn(t, 5, 0.5, 0.75, 2.0),
    "max_pool2d": lambda t: kernels.max_pool2d(t, 3, 2, 0),
    "relu_lrn_max_pool2d": lambda t: kernels.relu_lrn_max_pool2d(t, 5, 0.5, 0.75, 2.0, 3, 2, 0),
    "relu_max_pool2d": lambda t: kernels.relu_max_pool2d(t, 3, 2, 0),
    "dropout": lambda t: kernels.dropout(t, 0.5, True, 99),
    "relu_dropout": lambda t: kernels.relu_dropout(t, 0.5, True, 99),
}


def refuse_direct_launches(monkeypatch):
    """Make ``fn[grid]`` of every Triton kernel raise: inside ``recording`` nothing may launch."""
    import triton.runtime.interpreter
    import triton.runtime.jit

    def refuse(fn, grid):
        raise AssertionError(f"{getattr(fn, '__name__', fn)} launched directly, not through "
                             f"kernels._common.launch (no device guard)")

    monkeypatch.setattr(triton.runtime.jit.KernelInterface, "__getitem__", refuse)
    if "__getitem__" in vars(triton.runtime.interpreter.InterpretedFunction):
        monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "__getitem__", refuse)


@pytest.mark.parametrize("op", sorted(OP_CALLS))
def test_every_launch_names_its_tensors_device(monkeypatch, op):
    """Each op launches every kernel through ``launch`` (the guard's only way in) and hands it its
    tensors' device (not the current one), forward and backward, every tensor argument on that device.
    (Recorded, not run: CPU tensors stand in for cuda:1.)"""
    refuse_direct_launches(monkeypatch)
    launches = []
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    with _common.recording(launches.append):
        out = OP_CALLS[op](x)
        torch.autograd.grad(out, x, torch.ones_like(out))
    assert len(launches) >= 2, [launch.name for launch in launches]
    for launch in launches:
        assert launch.device == x.device, (launch.name, launch.device)
        for a in launch.args:
            assert not isinstance(a, torch.Tensor) or a.device == launch.device, (launch.name, a.device)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("op", sorted(OP_CALLS))
def test_cuda_op_on_the_second_device_while_the_first_is_current(op):
    """With cuda:0 current, the op on cuda:1 tensors gives what it gives on cuda:0 (the same kernels on
    the same values: bit for bit), forward and backward, and leaves cuda:0 current."""
    x = make_values((2, 16, 13, 13), "normal", 6, torch.float32, 10.0)
    results = []
    with torch.cuda.device(0):
        for device in ("cuda:0", "cuda:1"):
            xk = x.to(device).requires_grad_()
            out = OP_CALLS[op](xk)
            g = make_grad(out.shape, 6, torch.float32).to(device)
            (dx,) = torch.autograd.grad(out, xk, g)
            torch.cuda.synchronize(device)
            assert out.device == dx.device == torch.device(device)
            results.append((out.detach().cpu(), dx.cpu()))
        assert torch.cuda.current_device() == 0
    (out0, dx0), (out1, dx1) = results
    assert torch.equal(bits(out1), bits(out0)), f"{op}: forward on cuda:1 != on cuda:0"
    assert torch.equal(bits(dx1), bits(dx0)), f"{op}: backward on cuda:1 != on cuda:0"
    if op in ("relu_lrn", "max_pool2d", "relu_max_pool2d"):
        ref_fn = {"relu_lrn": lambda t: reference.relu_lrn(t, 5, 0.5, 0.75, 2.0),
                  "max_pool2d": lambda t: reference.max_pool2d(t, 3, 2, 0),
                  "relu_max_pool2d": lambda t: F.max_pool2d(F.relu(t), 3, 2, 0)}[op]
        assert_close_verbose(out1, ref_fn(x), TOLERANCES[torch.float32], name=f"{op} on cuda:1")


# ================================================================================================
# c. integer dropout seed: no host-to-device copy
# ================================================================================================

SEED = 123


def _is_int(a) -> bool:
    return isinstance(a, int) and not isinstance(a, bool)


@pytest.mark.parametrize("op", ["dropout", "relu_dropout"])
def test_int_seed_reaches_the_kernel_as_an_integer(op):
    """Recorded launches, forward and backward: no tensor argument but the data (x, y, dy, dx: x's
    size), and the seed 123 itself among the integer arguments of every launch that draws the mask."""
    x = torch.randn(4, 37, requires_grad=True)
    launches = []
    with _common.recording(launches.append):
        y = getattr(kernels, op)(x, 0.5, True, seed=SEED)
        n_forward = len(launches)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert n_forward >= 1 and len(launches) > n_forward, [launch.name for launch in launches]
    for i, launch in enumerate(launches):
        where = f"{op} {'forward' if i < n_forward else 'backward'} launch {launch.name}"
        extra = [tuple(a.shape) for a in launch.args
                 if isinstance(a, torch.Tensor) and a.numel() != x.numel()]
        assert not extra, f"{where}: tensor arguments other than the data: {extra} (a seed tensor?)"
        draws_mask = i < n_forward or op == "dropout"  # relu_dropout's backward reads its output instead
        if draws_mask:
            assert any(_is_int(a) and a == SEED for a in launch.args), \
                f"{where}: the seed {SEED} is not among the integer arguments {launch.args}"


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("op", ["dropout", "relu_dropout"])
def test_int_seed_is_not_made_into_a_tensor(monkeypatch, path, op):
    """No tensor factory is called with the seed, forward or backward, on either path."""
    made = []

    def spy(name, factory):
        def wrapper(*args, **kwargs):
            flat = [v for a in args for v in (a if isinstance(a, (list, tuple)) else [a])]
            if any(_is_int(v) and v == SEED for v in flat):
                made.append((name, args))
            return factory(*args, **kwargs)
        return wrapper

    for name in ("tensor", "as_tensor", "full", "scalar_tensor"):
        monkeypatch.setattr(torch, name, spy(name, getattr(torch, name)))
    x = torch.randn(4, 37, requires_grad=True)
    ctx = kernels.triton_disabled() if path == "torch" else contextlib.nullcontext()
    with ctx:
        y = getattr(kernels, op)(x, 0.5, True, seed=SEED)
        torch.autograd.grad(y, x, torch.ones_like(y))
    assert not made, f"{op} ({path}) made the seed into a tensor: {made}"


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["dropout", "relu_dropout"])
def test_cuda_graph_captures_dropout_with_an_int_seed(op):
    """Forward and backward with an int seed captured in a CUDA graph (a host-to-device copy of the
    seed cannot be), replayed on new data: the eager call's output and gradient, the same mask."""
    fn = getattr(kernels, op)
    x = torch.randn(8, 4096, device="cuda")
    g = torch.randn(8, 4096, device="cuda")
    static_x = x.clone().requires_grad_()

    def step():
        y = fn(static_x, 0.5, True, SEED)
        (dx,) = torch.autograd.grad(y, static_x, g)
        return y, dx

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles the kernels) outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, static_dx = step()
    for data in (x, torch.randn_like(x)):
        with torch.no_grad():
            static_x.copy_(data)
        graph.replay()
        torch.cuda.synchronize()
        xe = data.clone().requires_grad_()
        ye = fn(xe, 0.5, True, SEED)
        (dxe,) = torch.autograd.grad(ye, xe, g)
        assert torch.equal(static_y, ye.detach()), f"{op}: replayed forward != eager"
        assert torch.equal(static_dx, dxe), f"{op}: replayed backward != eager"
    assert 0.3 < float((static_y == 0).float().mean()) < 0.8


# ================================================================================================
# d. int32 overflow of channel offsets
# ================================================================================================
#
# CPU note: no full-size run here. C*H*W > 2^31 per image means > 8.6 GB in float32 (4.3 GB in bfloat16)
# per tensor, and the interpreter would take hours; a launch recorded with ``recording`` on a meta tensor
# shows the integer arguments but not the type of ``i * s_c`` inside the kernel. Whether to add a CPU-side
# check (e.g. a static look at the kernels' offset arithmetic) is the lead's decision.

BIG_SHAPE = (1, 3, 32768, 32769)  # C*H*W = 3.2e9 > 2^31; s_c = H*W = 1.07e9 fits int32, 2 * s_c does not


def _need_free_gpu_bytes(n):
    free, _ = torch.cuda.mem_get_info()
    if free < n:
        pytest.skip(f"needs {n / 2**30:.0f} GiB free on the GPU, {free / 2**30:.1f} GiB free")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_channel_offsets_past_2_31_relu_lrn():
    """Channel 2 starts at element 2 * 32768 * 32769 = 2^31 + 65536: an int32 ``i * s_c`` wraps there.
    The LRN window spans only channels, so the reference of a few rows is computed on those rows."""
    _need_free_gpu_bytes(40 * 2**30)
    dtype = torch.bfloat16
    x = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda").mul_(3.0)
    dy = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda")
    lrn = (5, 0.5, 0.75, 2.0)
    out, dx = run_op(kernels.relu_lrn, x, dy, *lrn)
    for rows in (slice(0, 2), slice(16384, 16386), slice(-2, None)):  # all 3 channels of each row
        sl = (slice(None), slice(None), rows, slice(None))
        ref, ref_dx = ref_forward_backward(reference.relu_lrn, x[sl], dy[sl], *lrn)
        name = f"relu_lrn {BIG_SHAPE} rows {rows}"
        assert_close_verbose(out[sl], ref, TOLERANCES[dtype], name=name)
        assert_close_verbose(dx[sl], ref_dx, grad_tol(dtype, ref_dx), name=name + " backward")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_channel_offsets_past_2_31_relu_lrn_max_pool2d():
    """The fused block (3x3 stride 2): the last pooled rows 16381 and 16382 read input rows 32762-32766;
    input rows 32763-32766 get gradient from those rows only (32767 from none)."""
    _need_free_gpu_bytes(40 * 2**30)
    dtype = torch.bfloat16
    x = torch.randn(BIG_SHAPE, dtype=dtype, device="cuda").mul_(3.0)
    lrn, pool = (5, 0.5, 0.75, 2.0), (3, 2, 0)
    out_shape = (1, 3, 16383, 16384)
    dy = torch.randn(out_shape, dtype=dtype, device="cuda")
    out, dx = run_op(kernels.relu_lrn_max_pool2d, x, dy, *lrn, *pool)
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
    # the first rows too (channel 2's offsets wrap from its first element on)
    own, own_dx = own_composition("triton", x[:, :, :5], lrn, pool, dy[:, :, :2])
    assert torch.equal(bits(out[:, :, :2]), bits(own)), "first rows"
    assert_close_verbose(dx[:, :, :3], own_dx[:, :, :3], grad_tol(dtype, own_dx), name="first rows backward")
